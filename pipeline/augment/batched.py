"""The augmentation as a few batched tensor ops, on any device.

Same maths as `reference.py`, for a whole batch at once and without per-image
Python: translate + flip are one gather from the zero-padded batch, jitter and
normalisation one fused multiply-add. Used by the resident loader, and as the
device-side tail of the FFCV and DALI backends on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..stats import ChannelStats
from ..device import to_device
from .params import CROP, MAX_OFFSET, PAD, AugParams
from .pca import normalise_affine, pca_matrix


@dataclass
class BatchParams:
    """Per-image parameters as tensors on the batch's device."""

    dx: torch.Tensor  # int64 (B,)
    dy: torch.Tensor  # int64 (B,)
    flip: torch.Tensor  # bool (B,)
    alpha: torch.Tensor  # float32 (B, 3)

    @classmethod
    def from_params(cls, p: AugParams, device: torch.device) -> "BatchParams":
        """The tensors of `p` on `device`, copied without making the host wait."""
        return cls(*(to_device(torch.from_numpy(np.ascontiguousarray(v)), device)
                     for v in (p.dx, p.dy, p.flip, p.alpha)))

    def take(self, index: torch.Tensor) -> "BatchParams":
        return BatchParams(self.dx[index], self.dy[index], self.flip[index], self.alpha[index])


class Normaliser:
    """Stats of a split as device tensors: the PCA matrix and the normalisation affine."""

    def __init__(self, stats: ChannelStats, variant: str, device: torch.device):
        scale, shift = normalise_affine(stats)
        self.pca = torch.as_tensor(pca_matrix(stats, variant), device=device)
        self.scale = torch.as_tensor(scale, device=device)
        self.shift = torch.as_tensor(shift, device=device)


def prepare_source(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (2, N, C, H + 2*PAD, W + 2*PAD) uint8: zero-padded planes, plain and mirrored.

    Done once per split (resident loader) or per batch. With the mirrored copy
    at hand, translate + flip is a single gather: flipping the window at dx is
    the window at MAX_OFFSET - dx of the mirrored image.
    """
    padded = F.pad(images.permute(0, 3, 1, 2), (PAD, PAD, PAD, PAD))
    return torch.stack([padded, padded.flip(3)])


def translate_flip(source: torch.Tensor, index: torch.Tensor, p: BatchParams) -> torch.Tensor:
    """Images `index` of a prepared source, translated by (dx, dy) and mirrored where `flip`: (B, C, CROP, CROP) uint8."""
    windows = source.unfold(3, CROP, 1).unfold(4, CROP, 1)  # (2, N, C, 9, 9, CROP, CROP), a view
    dx = torch.where(p.flip, MAX_OFFSET - p.dx, p.dx)
    # plain `windows[...]` would return a channels-innermost result, on which the per-channel
    # arithmetic that follows is several times slower: ask for contiguous NCHW
    out = torch.empty((len(index), source.shape[2], CROP, CROP), dtype=source.dtype, device=source.device)
    return torch.ops.aten.index.Tensor_out(windows, [p.flip.long(), index, None, p.dy, dx], out=out)


def jitter_normalise(images: torch.Tensor, alpha: torch.Tensor | None, norm: Normaliser) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float32 (B, C, H, W): add M @ alpha, clamp to 0..255, then normalise.

    Per-channel constants broadcast over whole planes: fast on contiguous NCHW input.
    """
    x = images.to(torch.float32)
    if alpha is not None:
        delta = alpha.to(torch.float32) @ norm.pca.T  # (B, 3)
        x = x.add_(delta[:, :, None, None]).clamp_(0.0, 255.0)
    return x.mul_(norm.scale[:, None, None]).add_(norm.shift[:, None, None])


def to_layout(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """Cast an NCHW batch to `dtype` in the requested memory format."""
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def augment(source: torch.Tensor, index: torch.Tensor, table: BatchParams | None, norm: Normaliser,
            dtype: torch.dtype, channels_last: bool, jitter: bool = True) -> torch.Tensor:
    """Steps 1-5 for images `index` of a prepared source, with their parameters looked up in `table` (the
    whole split's); with `table=None`, steps 4-5 only (eval). Everything from the look-up on is one function,
    so that torch.compile takes it whole.

    For eval the source is the plain (N, C, H, W) uint8 planes (no padding needed).
    """
    if table is None:
        return to_layout(jitter_normalise(source[index], None, norm), dtype, channels_last)
    p = table.take(index)
    x = translate_flip(source, index, p)
    return to_layout(jitter_normalise(x, p.alpha if jitter else None, norm), dtype, channels_last)
