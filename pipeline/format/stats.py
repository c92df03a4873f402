"""Per-channel mean/std and the RGB PCA of the training images, streamed.

Sums of uint8 pixels and of their pairwise products are integers far below
2**53, so accumulating them in float64 chunk by chunk is exact: the result does
not depend on chunking and needs no float64 copy of the whole split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Max population std of values in 0..255 is 127.5 (half at 0, half at 255).
MAX_STD = 128.0
# Eigenvectors of a symmetric matrix are orthonormal to ~1e-15; rounded
# statistics (4 decimals, as a hand-written file has) are within ~2e-4.
_ORTHONORMAL_TOL = 1e-3


@dataclass(frozen=True)
class ChannelStats:
    """Statistics of raw 0..255 RGB pixels of the train split.

    `eigenvectors[:, i]` is the i-th principal component; eigenvalues descend.
    The covariance uses the unbiased (n - 1) normalisation, as numpy.cov does;
    std is the population std (ddof=0), as torchvision's Normalize is usually fed.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eigenvalues: tuple[float, float, float]
    eigenvectors: tuple[tuple[float, float, float], ...]  # rows of the 3x3 matrix V

    def implausible(self) -> str | None:
        """Why these cannot be statistics of 0..255 pixels, or None if they can.

        A file's statistics feed every normalisation and the PCA jitter: a NaN
        or a zero std would silently turn every batch into NaN, so they are
        checked wherever they are read.
        """
        try:
            mean, std, vals, vecs = (np.asarray(a, dtype=np.float64) for a in self.as_arrays())
        except (TypeError, ValueError):
            return "statistics are not numbers"
        if mean.shape != (3,) or std.shape != (3,) or vals.shape != (3,) or vecs.shape != (3, 3):
            return "statistics do not have 3 channels (mean, std, eigenvalues of 3, eigenvectors 3x3)"
        for name, a in (("mean", mean), ("std", std), ("PCA eigenvalues", vals), ("PCA eigenvectors", vecs)):
            if not np.isfinite(a).all():
                return f"{name} {_fmt(a)} is not finite"
        if (mean < 0).any() or (mean > 255).any():
            return f"mean {_fmt(mean)} is outside 0..255"
        if (std <= 0).any() or (std > MAX_STD).any():
            return f"std {_fmt(std)} is outside (0, {MAX_STD:g}]"
        if (vals < 0).any() or (np.diff(vals) > 0).any():
            return f"PCA eigenvalues {_fmt(vals)} are not non-negative and descending"
        if not math.isclose(vals.sum(), (std ** 2).sum(), rel_tol=1e-2):
            return (f"PCA eigenvalues {_fmt(vals)} do not add up to the total variance {(std ** 2).sum():.4g} "
                    "that std records")
        if np.abs(vecs.T @ vecs - np.eye(3)).max() > _ORTHONORMAL_TOL:
            return "PCA eigenvectors are not orthonormal"
        return None

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (np.array(self.mean), np.array(self.std),
                np.array(self.eigenvalues), np.array(self.eigenvectors))


def compute_stats(images: np.ndarray, chunk: int = 2048) -> ChannelStats:
    """Stats of an (N, H, W, 3) uint8 array, in chunks of `chunk` images."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    s1 = np.zeros(3)
    s2 = np.zeros((3, 3))
    n = 0
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].reshape(-1, 3).astype(np.float64)
        s1 += x.sum(axis=0)
        s2 += x.T @ x
        n += x.shape[0]
    if n < 2:
        raise ValueError("need at least two pixels to compute statistics")
    mean = s1 / n
    scatter = s2 - np.outer(s1, s1) / n
    std = np.sqrt(np.diag(scatter) / n)
    cov = scatter / (n - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    # a deterministic sign: each component's largest entry is positive
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(3)])
    vecs = vecs * signs
    return ChannelStats(
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        eigenvalues=tuple(float(v) for v in vals),
        eigenvectors=tuple(tuple(float(v) for v in row) for row in vecs),
    )


def _fmt(a: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in np.ravel(a)) + ")"
