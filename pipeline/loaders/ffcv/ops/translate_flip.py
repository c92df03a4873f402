"""Steps 1-2 of the augmentation as an FFCV Operation: pad-4 translate, then horizontal flip.

FFCV's RandomTranslate + RandomHorizontalFlip have this meaning (zero fill,
offsets uniform on 0..2*pad, flip with probability 1/2) but draw from numba's
unseeded per-thread generator, so they are not reproducible from (seed, epoch).
This op reads each sample's (dx, dy, flip) from the epoch's parameter table
(runtime.ParamTables), indexed by split position, and does both steps in one
gather straight from the unpadded image, with no padded copy.
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

from ....augment import CROP, PAD
from .runtime import HostArray, int64_rows


@numba.njit(cache=True)
def translate_flip_image(src, dst, dx, dy, flip):
    """dst (CROP, CROP, C) = window (dx, dy) of src zero-padded by PAD, mirrored when `flip`."""
    h, w, c = src.shape
    for y in range(CROP):
        sy = y + dy - PAD
        row_inside = 0 <= sy < h
        for x in range(CROP):
            sx = (CROP - 1 - x if flip else x) + dx - PAD
            if row_inside and 0 <= sx < w:
                for k in range(c):
                    dst[y, x, k] = src[sy, sx, k]
            else:
                for k in range(c):
                    dst[y, x, k] = 0


class TranslateFlip(Operation):
    """uint8 (CROP, CROP, 3) HWC -> uint8 (CROP, CROP, 3): translated and maybe mirrored.

    `geometry`: the (N, 3) int64 table of (dx, dy, flip) per split position.
    """

    def __init__(self, geometry: HostArray):
        super().__init__()
        self.geometry = geometry

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        if tuple(previous_state.shape) != (CROP, CROP, 3):
            raise ValueError(f"TranslateFlip expects {CROP}x{CROP} RGB images, got shape {previous_state.shape}")
        return (replace(previous_state, jit_mode=True),
                AllocationQuery((CROP, CROP, 3), np.dtype(np.uint8)))

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        address, rows = self.geometry.address, self.geometry.rows

        def translate_flip(images, dst, indices):
            table = int64_rows(address, rows, 3)
            for i in my_range(len(indices)):
                j = indices[i]
                translate_flip_image(images[i], dst[i], table[j, 0], table[j, 1], table[j, 2] != 0)
            return dst[:len(indices)]

        translate_flip.is_parallel = True
        translate_flip.with_indices = True
        return translate_flip
