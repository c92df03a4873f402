"""Steps 3-4 of the augmentation as an FFCV Operation: PCA colour jitter, clamp, normalise.

uint8 in, float32 out, so the jittered pixel is never rounded through uint8;
normalisation is fused in because the clamped float would otherwise need a
second float32 pass (FFCV's NormalizeImage only reads uint8). Each sample's
alpha comes from the epoch's parameter table (runtime.ParamTables), indexed
by split position.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Tuple

import numba
import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from .runtime import HostArray, float32_rows


@numba.njit(cache=True)
def jitter_normalise_image(src, dst, matrix, alpha, scale, shift):
    """dst = clamp(src + M @ alpha, 0, 255) * scale + shift per channel (RGB), float32; delta in float64."""
    a0, a1, a2 = np.float64(alpha[0]), np.float64(alpha[1]), np.float64(alpha[2])
    d0 = np.float32(matrix[0, 0] * a0 + matrix[0, 1] * a1 + matrix[0, 2] * a2)
    d1 = np.float32(matrix[1, 0] * a0 + matrix[1, 1] * a1 + matrix[1, 2] * a2)
    d2 = np.float32(matrix[2, 0] * a0 + matrix[2, 1] * a1 + matrix[2, 2] * a2)
    lo, hi = np.float32(0.0), np.float32(255.0)
    h, w, _ = src.shape
    for y in range(h):
        for x in range(w):
            dst[y, x, 0] = min(max(np.float32(src[y, x, 0]) + d0, lo), hi) * scale[0] + shift[0]
            dst[y, x, 1] = min(max(np.float32(src[y, x, 1]) + d1, lo), hi) * scale[1] + shift[1]
            dst[y, x, 2] = min(max(np.float32(src[y, x, 2]) + d2, lo), hi) * scale[2] + shift[2]


class PCAJitterNormalise(Operation):
    """uint8 (H, W, 3) HWC -> float32 (H, W, 3) HWC: jittered by M @ alpha, clamped, normalised.

    matrix: M = V diag(s) (augment.pca_matrix); scale/shift: the normalisation
    affine (augment.normalise_affine); alphas: the (N, 3) float32 table of
    alpha per split position.
    """

    def __init__(self, matrix: np.ndarray, scale: np.ndarray, shift: np.ndarray, alphas: HostArray):
        super().__init__()
        self.matrix = np.asarray(matrix, np.float64).reshape(3, 3)
        self.scale = np.asarray(scale, np.float32).reshape(3)
        self.shift = np.asarray(shift, np.float32).reshape(3)
        self.alphas = alphas

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        if len(previous_state.shape) != 3 or previous_state.shape[2] != 3 or previous_state.dtype != np.uint8:
            raise ValueError(f"PCAJitterNormalise expects uint8 HWC RGB images, got {previous_state.dtype} "
                             f"{previous_state.shape}")
        out = np.dtype(np.float32)
        return replace(previous_state, jit_mode=True, dtype=out), AllocationQuery(previous_state.shape, out)

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        matrix, scale, shift = self.matrix, self.scale, self.shift
        address, rows = self.alphas.address, self.alphas.rows

        def pca_jitter(images, dst, indices):
            table = float32_rows(address, rows, 3)
            for i in my_range(len(indices)):
                jitter_normalise_image(images[i], dst[i], matrix, table[indices[i]], scale, shift)
            return dst[:len(indices)]

        pca_jitter.is_parallel = True
        pca_jitter.with_indices = True
        return pca_jitter
