"""The epoch's parameter tables, as host arrays that FFCV-compiled code reads at call time.

FFCV compiles each Operation's code once per Loader, and numba freezes every
NumPy array a compiled function closes over into a constant copy. The
parameters change every epoch and fill tens of thousands of rows, too many to
bake into compiled code, so the code closes over each table's *address* (a
plain integer constant) and views the live memory through it, with the same
int-to-pointer cast FFCV's own readers use. The tables are allocated once, for
the whole split, and refilled in place between epochs, while no FFCV thread
runs; the Python object that owns them (the loader) outlives the FFCV Loader
that runs the code.
"""

from __future__ import annotations

import numba
import numpy as np
from ffcv.utils import cast_int_to_byte_ptr

from ....augment import AugParams


class HostArray:
    """A C-contiguous NumPy array plus what compiled code needs to view it: address and rows."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array)

    @property
    def address(self) -> int:
        return int(self.array.ctypes.data)

    @property
    def rows(self) -> int:
        return int(self.array.shape[0])


class ParamTables:
    """One epoch's parameters for every split position: (dx, dy, flip) as int64 rows, alpha as float32 rows."""

    def __init__(self, n: int):
        self.geometry = HostArray(np.zeros((n, 3), np.int64))
        self.alpha = HostArray(np.zeros((n, 3), np.float32))

    def fill(self, p: AugParams) -> None:
        """Overwrite the tables in place (their addresses are compiled into the operations)."""
        g = self.geometry.array
        g[:, 0], g[:, 1], g[:, 2] = p.dx, p.dy, p.flip
        self.alpha.array[:] = p.alpha


# Explicit signatures: the callers pass addresses as compile-time constants, and numba would otherwise
# compile (and cache on disk) one specialisation per literal address.
@numba.njit("int64[:, ::1](uintp, intp, intp)", cache=True)
def int64_rows(address, rows, cols):
    """A (rows, cols) int64 view of the host array at `address`."""
    return numba.carray(cast_int_to_byte_ptr(address), rows * cols * 8).view(np.int64).reshape((rows, cols))


@numba.njit("float32[:, ::1](uintp, intp, intp)", cache=True)
def float32_rows(address, rows, cols):
    """A (rows, cols) float32 view of the host array at `address`."""
    return numba.carray(cast_int_to_byte_ptr(address), rows * cols * 4).view(np.float32).reshape((rows, cols))
