"""Host arrays that FFCV-compiled code reads at call time.

FFCV compiles each Operation's code once per Loader, and numba freezes every
NumPy array a compiled function closes over into a constant copy. Per-epoch
state (the epoch's random key) and large tables (the test hook's explicit
parameters: tens of thousands of rows, too big to bake into compiled code) must
therefore reach the kernels another way. The code closes over an array's
*address* (a plain integer constant) and views the live memory through it, with
the same int-to-pointer cast FFCV's own readers use. The Python object that owns
the array must outlive the Loader that runs the code: the Operations holding a
`HostArray` are owned by that Loader's pipelines, so it does.
"""

from __future__ import annotations

import numba
import numpy as np
from ffcv.utils import cast_int_to_byte_ptr

from ..base import mix_seed


class HostArray:
    """A C-contiguous NumPy array plus what compiled code needs to view it: address and size."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array)

    @property
    def address(self) -> int:
        return int(self.array.ctypes.data)

    @property
    def rows(self) -> int:
        return int(self.array.shape[0])


class EpochKey(HostArray):
    """The 64-bit key of the current (seed, epoch), read by the kernels at every batch.

    Set before an epoch's iterator starts (the thread start orders the write
    before the kernels' reads); the loader runs one epoch at a time.
    """

    def __init__(self) -> None:
        super().__init__(np.zeros(1, np.uint64))

    def set(self, seed: int, epoch: int) -> None:
        self.array[0] = np.uint64(mix_seed(seed, epoch))

    @property
    def value(self) -> np.uint64:
        return self.array[0]


# Explicit signatures: the callers pass addresses as compile-time constants, and numba would otherwise
# compile (and cache on disk) one specialisation per literal address.
@numba.njit("uint64(uintp)", cache=True)
def uint64_at(address):
    """The uint64 stored at `address`."""
    return numba.carray(cast_int_to_byte_ptr(address), 8).view(np.uint64)[0]


@numba.njit("int64[:, ::1](uintp, intp, intp)", cache=True)
def int64_rows(address, rows, cols):
    """A (rows, cols) int64 view of the host array at `address`."""
    return numba.carray(cast_int_to_byte_ptr(address), rows * cols * 8).view(np.int64).reshape((rows, cols))


@numba.njit("float32[:, ::1](uintp, intp, intp)", cache=True)
def float32_rows(address, rows, cols):
    """A (rows, cols) float32 view of the host array at `address`."""
    return numba.carray(cast_int_to_byte_ptr(address), rows * cols * 4).view(np.float32).reshape((rows, cols))
