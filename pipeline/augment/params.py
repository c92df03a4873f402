"""Per-image random parameters of the training augmentation, and where a loader gets them.

Every backend asks its `ParamSource` for the whole split's parameters once per
epoch (`AugParams`, indexed by split position) and applies them with its own
operators. In training the source is `RandomParams`: draws from (seed, epoch)
alone, so an epoch is reproducible, a resumed run sees what an uninterrupted
one saw, an image's augmentation does not depend on the rank or the batch it
lands in, and the four backends augment identically. Tests hand a loader a
`FixedParams` table instead, to compare it with the reference on given
parameters: the same code path, another source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

PAD = 4  # zero padding on each side before the crop
CROP = 32  # output size
MAX_OFFSET = 2 * PAD  # dx, dy uniform on {0, ..., MAX_OFFSET}


@dataclass(frozen=True)
class AugParams:
    """dx/dy: crop offsets into the padded image (column, row); flip: mirror after the crop;
    alpha: (N, 3) PCA coefficients, already drawn with the chosen sigma (alpha ~ N(0, sigma^2))."""

    dx: np.ndarray  # int64 (N,)
    dy: np.ndarray  # int64 (N,)
    flip: np.ndarray  # bool (N,)
    alpha: np.ndarray  # float32 (N, 3)

    def __post_init__(self) -> None:
        n = len(self.dx)
        if not (len(self.dy) == len(self.flip) == len(self.alpha) == n) or np.shape(self.alpha)[1:] != (3,):
            raise ValueError("AugParams fields must have matching lengths and alpha shape (N, 3)")
        for v in (self.dx, self.dy):
            if n and (np.min(v) < 0 or np.max(v) > MAX_OFFSET):
                raise ValueError(f"offsets must lie in 0..{MAX_OFFSET}")

    def __len__(self) -> int:
        return len(self.dx)

    def take(self, index: np.ndarray) -> "AugParams":
        return AugParams(self.dx[index], self.dy[index], self.flip[index], self.alpha[index])

    @classmethod
    def random(cls, n: int, sigma: float, rng: np.random.Generator) -> "AugParams":
        """Draw parameters for `n` images from `rng`: offsets uniform on 0..MAX_OFFSET, flips with probability
        1/2, alpha ~ N(0, sigma^2) rounded to float32."""
        return cls(
            dx=rng.integers(0, MAX_OFFSET + 1, n).astype(np.int64),
            dy=rng.integers(0, MAX_OFFSET + 1, n).astype(np.int64),
            flip=rng.random(n) < 0.5,
            alpha=(rng.standard_normal((n, 3)) * sigma).astype(np.float32),
        )



class ParamSource(Protocol):
    """Gives every image of a split its augmentation parameters for an epoch."""

    def for_epoch(self, epoch: int, n: int) -> AugParams:
        """Parameters for split positions 0..n-1 in `epoch`."""


@dataclass(frozen=True)
class RandomParams:
    """Training's source: offsets, flips and PCA coefficients drawn from (seed, epoch) alone.

    One NumPy draw per epoch for the whole split (40,000 images: about a
    millisecond); `sigma` is the standard deviation of alpha.
    """

    seed: int = 0
    sigma: float = 0.1

    def for_epoch(self, epoch: int, n: int) -> AugParams:
        return AugParams.random(n, self.sigma, np.random.default_rng([self.seed, epoch, _STREAM]))


@dataclass(frozen=True)
class FixedParams:
    """The same given table in every epoch (a test comparing a backend with the reference)."""

    table: AugParams

    def for_epoch(self, epoch: int, n: int) -> AugParams:
        if len(self.table) != n:
            raise ValueError(f"the parameter table covers {len(self.table)} images, the split has {n}")
        return self.table


_STREAM = 0xA06  # keeps these draws apart from other uses of (seed, epoch), such as the shuffle
