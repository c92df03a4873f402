"""The augmentation as a few batched tensor ops, on any device.

Same maths as `reference.py` (docs/design.md, "The augmentation"), for many
images at once and without per-image Python. The resident loader applies it to
a whole epoch (on a GPU) or to chunks of a few batches (on a CPU, where a
chunk that stays in cache is faster than one large pass); the FFCV backend uses
`jitter_normalise` as its device-side tail.

- translate + flip: one `index_select` from an overlapping strided view of the
  zero-padded planes (plain and mirrored), in which every possible 32x32
  window is one row: a window is a flat offset, and taking B windows is a
  plain copy of B rows (several times faster than advanced indexing over the
  offsets, on a CPU as on a GPU);
- PCA jitter and normalisation: in place on one float32 buffer (a float32
  result is that buffer), else one cast into the output dtype and layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..device import to_device
from ..format.stats import ChannelStats
from .params import CROP, MAX_OFFSET, PAD, AugParams
from .pca import normalise_affine, pca_matrix


@dataclass
class BatchParams:
    """Per-image parameters as tensors on the images' device."""

    dx: torch.Tensor  # int64 (B,)
    dy: torch.Tensor  # int64 (B,)
    flip: torch.Tensor  # bool (B,)
    alpha: torch.Tensor  # float32 (B, 3)

    @classmethod
    def from_params(cls, p: AugParams, device: torch.device) -> "BatchParams":
        """The tensors of `p` on `device`, copied without making the host wait."""
        return cls(*(to_device(torch.from_numpy(np.ascontiguousarray(v)), device)
                     for v in (p.dx, p.dy, p.flip, p.alpha)))


class DeviceStats:
    """Stats of a split as device tensors: the PCA matrix M (delta = M @ alpha) and the normalisation affine,
    shaped (C, 1, 1) to broadcast over NCHW planes."""

    def __init__(self, stats: ChannelStats, variant: str, device: torch.device):
        scale, shift = normalise_affine(stats)
        self.pca = torch.as_tensor(pca_matrix(stats, variant), device=device)
        self.scale = torch.as_tensor(scale, device=device)[:, None, None]
        self.shift = torch.as_tensor(shift, device=device)[:, None, None]


class Windows:
    """Every 32x32 crop window of a split's zero-padded images, plain and mirrored, as the rows of one view.

    The planes are (2, N, C, H + 2*PAD, W + 2*PAD) uint8: each image padded,
    then the same mirrored. Flipping the window at dx is the window at
    MAX_OFFSET - dx of the mirrored image, so translate + flip is one window,
    and a window starting at flat element o is row o of `view` (rows overlap;
    `view` is read only).
    """

    def __init__(self, images: torch.Tensor):
        """`images`: (N, H, W, C) uint8 on the device the windows will live on."""
        padded = F.pad(images.permute(0, 3, 1, 2), (PAD, PAD, PAD, PAD))
        self.planes = torch.stack([padded, padded.flip(3)]).contiguous()
        _, self.n, c, self.side, _ = self.planes.shape
        plane = self.side * self.side
        self.image = c * plane  # elements per padded image
        flat = self.planes.view(-1)
        span = (c - 1) * plane + (CROP - 1) * self.side + CROP  # elements one window reaches over
        self.view = flat.as_strided((flat.numel() - span + 1, c, CROP, CROP), (1, plane, self.side, 1))

    def offsets(self, index: torch.Tensor, p: BatchParams) -> torch.Tensor:
        """Flat start of the window of split image index[i] with parameters p[index[i]] (int64, on the device)."""
        flip = p.flip[index]
        dx = torch.where(flip, MAX_OFFSET - p.dx[index], p.dx[index])
        return (flip.long() * self.n + index) * self.image + p.dy[index] * self.side + dx

    def take(self, offsets: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The windows at `offsets`: (B, C, CROP, CROP) uint8, translated and flipped (steps 1-2)."""
        return torch.index_select(self.view, 0, offsets, out=out)


def pca_delta(alpha: torch.Tensor, stats: DeviceStats) -> torch.Tensor:
    """Each image's colour shift M @ alpha, shaped (B, C, 1, 1) to add to its planes."""
    return (alpha.to(torch.float32) @ stats.pca.T)[:, :, None, None]


def jitter_normalise_(x: torch.Tensor, delta: Optional[torch.Tensor], stats: DeviceStats) -> torch.Tensor:
    """Steps 3-4 in place on float32 (B, C, H, W) pixels: add the shift, clamp to 0..255, normalise."""
    if delta is not None:
        x.add_(delta).clamp_(0.0, 255.0)
    return x.mul_(stats.scale).add_(stats.shift)


def jitter_normalise(images: torch.Tensor, alpha: Optional[torch.Tensor], stats: DeviceStats) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float32 (B, C, H, W): steps 3-4 (alpha None: step 4 only)."""
    return jitter_normalise_(images.to(torch.float32), None if alpha is None else pca_delta(alpha, stats), stats)


def to_layout(x: torch.Tensor, dtype: torch.dtype, channels_last: bool, copy: bool = False) -> torch.Tensor:
    """Step 5: an NCHW batch in `dtype` and the requested memory format (a new tensor when `copy`)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=fmt, copy=copy)


class Scratch:
    """Reused uint8 and float32 buffers for chunks of up to `size` images: fresh buffers this large would
    each cost the CPU a round of page faults, and the GPU an allocation."""

    def __init__(self, size: int, channels: int, device: torch.device):
        shape = (size, channels, CROP, CROP)
        self.pixels = torch.empty(shape, dtype=torch.uint8, device=device)
        self.values = torch.empty(shape, dtype=torch.float32, device=device)


def augment_chunk(windows: Windows, offsets: torch.Tensor, delta: Optional[torch.Tensor], stats: DeviceStats,
                  dtype: torch.dtype, channels_last: bool, scratch: Scratch) -> torch.Tensor:
    """Steps 1-5 for the windows at `offsets` (delta None: no jitter): a new tensor, the scratch reused."""
    m = offsets.shape[0]
    return _finish(windows.take(offsets, out=scratch.pixels[:m]), delta, stats, dtype, channels_last, scratch)


def normalise_chunk(planes: torch.Tensor, index: torch.Tensor, stats: DeviceStats, dtype: torch.dtype,
                    channels_last: bool, scratch: Scratch) -> torch.Tensor:
    """Steps 4-5 for images `index` of (N, C, H, W) uint8 planes (evaluation): a new tensor."""
    m = index.shape[0]
    pixels = torch.index_select(planes, 0, index, out=scratch.pixels[:m])
    return _finish(pixels, None, stats, dtype, channels_last, scratch)


def _finish(pixels: torch.Tensor, delta: Optional[torch.Tensor], stats: DeviceStats, dtype: torch.dtype,
            channels_last: bool, scratch: Scratch) -> torch.Tensor:
    """Steps 3-5 on uint8 windows. A float32 result is computed in place in its own new tensor (one pass
    fewer than computing in the scratch and copying out); another dtype is computed in float32 in the
    scratch, then cast once."""
    if dtype == torch.float32:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device, memory_format=fmt)
        return jitter_normalise_(out.copy_(pixels), delta, stats)
    x = scratch.values[:pixels.shape[0]].copy_(pixels)
    return to_layout(jitter_normalise_(x, delta, stats), dtype, channels_last, copy=True)
