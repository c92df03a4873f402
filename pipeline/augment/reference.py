"""The definition of the augmentation: plain NumPy, one image at a time.

Every backend is tested against this on identical parameters. It is written to
be read, not to be fast; float64 inside, float32 out.
"""

from __future__ import annotations

import numpy as np

from ..format.stats import ChannelStats
from .params import CROP, PAD
from .pca import pca_matrix


def augment_image(image: np.ndarray, dx: int, dy: int, flip: bool, alpha: np.ndarray,
                  stats: ChannelStats, variant: str) -> np.ndarray:
    """One HWC uint8 training image -> CHW float32, steps 1-4 of docs/design.md ("The augmentation")."""
    h, w, c = image.shape
    # 1. translate: zero-pad PAD pixels on each side, take the CROP x CROP window at (dx, dy)
    padded = np.zeros((h + 2 * PAD, w + 2 * PAD, c), dtype=np.float64)
    padded[PAD:PAD + h, PAD:PAD + w] = image
    x = padded[dy:dy + CROP, dx:dx + CROP]
    # 2. horizontal flip
    if flip:
        x = x[:, ::-1]
    # 3. PCA colour jitter: one delta for every pixel (padding included), clamped to 0..255
    delta = pca_matrix(stats, variant).astype(np.float64) @ np.asarray(alpha, dtype=np.float64)
    x = np.clip(x + delta, 0.0, 255.0)
    return normalise_image(x, stats)


def normalise_image(image: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """Step 4 (and the layout of 5): (x / 255 - mean) / std per channel, HWC -> CHW float32."""
    mean01 = np.asarray(stats.mean) / 255.0
    std01 = np.asarray(stats.std) / 255.0
    y = (np.asarray(image, dtype=np.float64) / 255.0 - mean01) / std01
    return np.ascontiguousarray(y.transpose(2, 0, 1)).astype(np.float32)


def augment_batch_reference(images: np.ndarray, dx, dy, flip, alpha, stats: ChannelStats,
                            variant: str) -> np.ndarray:
    """The reference applied image by image to (N, H, W, C) -> (N, C, H, W)."""
    return np.stack([augment_image(images[i], int(dx[i]), int(dy[i]), bool(flip[i]), alpha[i], stats, variant)
                     for i in range(len(images))])


__all__ = ["augment_image", "normalise_image", "augment_batch_reference"]
