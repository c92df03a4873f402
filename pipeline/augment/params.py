"""Per-image random parameters of the training augmentation.

Backends draw these from their own generators; tests hand them in explicitly
(indexed by the image's position in the split) to compare a backend with the
reference on identical parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        """Draw parameters for `n` images with NumPy (tests; backends use their own generators)."""
        return cls(
            dx=rng.integers(0, MAX_OFFSET + 1, n).astype(np.int64),
            dy=rng.integers(0, MAX_OFFSET + 1, n).astype(np.int64),
            flip=rng.random(n) < 0.5,
            alpha=(rng.standard_normal((n, 3)) * sigma).astype(np.float32),
        )

    @classmethod
    def identity(cls, n: int) -> "AugParams":
        """Centre crop, no flip, no colour shift: the augmentation reduces to normalisation."""
        return cls(np.full(n, PAD, np.int64), np.full(n, PAD, np.int64), np.zeros(n, bool),
                   np.zeros((n, 3), np.float32))
