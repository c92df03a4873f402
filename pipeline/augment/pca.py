"""PCA colour jitter strength and the normalisation, from a split's stored stats.

This is the single place where the two variants are defined:

- "blog"  (the write-up): s = sqrt(lambda), lambda from raw 0..255 pixels;
- "paper" (Krizhevsky et al.): s = lambda / 255, i.e. the eigenvalue of [0, 1]-scaled
  data expressed back in 0..255 units (lambda_01 = lambda / 255^2, times 255).

delta = V @ (alpha * s) = M @ alpha with M = V diag(s).
"""

from __future__ import annotations

import numpy as np

from ..format.stats import ChannelStats
from . import PCA_VARIANTS



def pca_matrix(stats: ChannelStats, variant: str) -> np.ndarray:
    """M (3x3 float32) with delta = M @ alpha in 0..255 pixel units; zeros for "off"."""
    if variant not in PCA_VARIANTS:
        raise ValueError(f"unknown PCA variant {variant!r}; choose one of {', '.join(PCA_VARIANTS)}")
    lam = np.asarray(stats.eigenvalues, dtype=np.float64)
    vecs = np.asarray(stats.eigenvectors, dtype=np.float64)
    if variant == "off":
        return np.zeros((3, 3), np.float32)
    s = np.sqrt(lam) if variant == "blog" else lam / 255.0
    return (vecs * s[None, :]).astype(np.float32)


def normalise_affine(stats: ChannelStats) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel with (x / 255 - mean01) / std01 == x * scale + shift, x in 0..255."""
    mean = np.asarray(stats.mean, dtype=np.float64)
    std = np.asarray(stats.std, dtype=np.float64)
    return (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)
