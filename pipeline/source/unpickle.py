"""Load CIFAR-10's python-version batches without trusting them.

The official files are Python-2 pickles, and a pickle can call any importable
function. Genuine CIFAR-10 batches only ever reference numpy's array
reconstruction machinery, so that is all this unpickler admits; anything else
(os.system, builtins.eval, ...) is refused before it can run.

Even numpy's own machinery is not handed hostile arguments: `_reconstruct`
allocates whatever shape it is given (a 16 TB array is one short pickle away),
and `ndarray.__setstate__` / `dtype.__setstate__` accept states that set
arbitrary dtype flags. So the admitted names resolve to stand-ins that check
their arguments (a shape is refused above `MAX_ARRAY_BYTES` before anything is
allocated; only plain numeric dtypes are admitted) and build the array
themselves from the raw bytes in the pickle, which are already in memory.
Before any of that, the opcode stream is scanned without executing it, so a
pickle of millions of tiny objects is refused while it is still just bytes.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import pickletools

import numpy as np

from ..errors import DataError

# The largest array a CIFAR-10 batch holds: 10,000 x 3,072 uint8 pixels
# (30,720,000 bytes), with a margin.
MAX_ARRAY_BYTES = 32 << 20
# A genuine batch is ~30,000 opcodes (10,000 labels, 10,000 file names, their
# memo entries); the cap bounds how many Python objects a pickle can create.
MAX_OPCODES = 200_000
_MAX_DEPTH = 16  # genuine batches nest 3 deep; this also stops self-referencing pickles

# Plain numeric dtypes an array in a batch may have (the pixels are u1).
_DTYPES = frozenset({"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"})


class _NdarrayClass:
    """Stands in for `numpy.ndarray`, which a genuine pickle only names (as `_reconstruct`'s
    first argument) and never calls: calling it would allocate any shape."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray directly: not part of a CIFAR-10 batch")


_NDARRAY = _NdarrayClass()


def _check_shape(shape: object, itemsize: int) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of non-negative integers")
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise pickle.UnpicklingError(
            f"array of shape {shape} ({nbytes:,} bytes) is larger than any CIFAR-10 batch holds "
            f"({MAX_ARRAY_BYTES:,} bytes)")
    return shape


class _Dtype:
    """A numpy dtype named by the pickle, built only from a whitelisted type code and byte order."""

    def __init__(self, code: object, align: object = False, copy: object = False):
        if isinstance(code, bytes):
            code = code.decode("latin1")
        if not isinstance(code, str) or code not in _DTYPES:
            raise pickle.UnpicklingError(f"dtype {code!r} is not a plain numeric type")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: object) -> None:
        # numpy's state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "=") \
                or any(x is not None for x in state[2:5]):
            raise pickle.UnpicklingError("dtype state is not that of a plain numeric type")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
    """What numpy's `_reconstruct` returns; the array itself is made from the state that follows."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # numpy's state: (version, shape, dtype, is_fortran, raw bytes)
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("array state is not (version, shape, dtype, is_fortran, data)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype):
            raise pickle.UnpicklingError("array dtype was not built by numpy.dtype")
        shape = _check_shape(shape, dtype.dtype.itemsize)
        if isinstance(raw, str):  # a Python-2 str, decoded with latin1: the same bytes
            raw = raw.encode("latin1")
        if not isinstance(raw, bytes):
            raise pickle.UnpicklingError("array data is not raw bytes")
        if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
            raise pickle.UnpicklingError(f"array data is {len(raw):,} bytes, its shape {shape} needs "
                                         f"{math.prod(shape) * dtype.dtype.itemsize:,}")
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.array = flat.reshape(shape, order="F" if fortran else "C")


def _frombuffer(buf: object, dtype: object, shape: object, order: object, axis_order: object = None) -> _Array:
    """numpy's `_frombuffer`, which protocol 5 pickles name (the array's bytes in a PickleBuffer, in band),
    checked as `_Array.__setstate__` checks protocols 0-4: a plain dtype, a bounded shape, exactly its bytes."""
    if not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError("array dtype was not built by numpy.dtype")
    shape = _check_shape(shape, dtype.dtype.itemsize)
    if order not in ("C", "F", "K") or not (axis_order is None or (
            isinstance(axis_order, tuple) and sorted(axis_order) == list(range(len(shape))))):
        raise pickle.UnpicklingError(f"array order {order!r} / axis order {axis_order!r} is not numpy's")
    if not isinstance(buf, (bytes, bytearray)):
        raise pickle.UnpicklingError("array data is not raw bytes")
    need = math.prod(shape) * dtype.dtype.itemsize
    if len(buf) != need:
        raise pickle.UnpicklingError(f"array data is {len(buf):,} bytes, its shape {shape} needs {need:,}")
    flat = np.frombuffer(buf, dtype=dtype.dtype)
    out = _Array()
    out.array = (flat.reshape(shape, order="C").transpose(axis_order) if order == "K" and axis_order is not None
                 else flat.reshape(shape, order=order))
    return out


def _reconstruct(subtype: object, shape: object, typecode: object) -> _Array:
    """numpy's `_reconstruct(ndarray, (0,), b'b')`, checked: an empty placeholder, no allocation."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    _check_shape(shape, 1)
    return _Array()


# (module, name) pairs a genuine batch may reference. numpy 2 moved
# numpy.core to numpy._core; a file re-pickled by numpy 2 names the new path.
# Python 3's protocols 0-2 spell bytes as _codecs.encode(str, "latin1") (a
# pure function: it can only turn text into bytes); protocol 5 hands an
# array's bytes to numpy's _frombuffer.
_ALLOWED = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not part of a CIFAR-10 batch"
            ) from None


def _count_opcodes(data: bytes) -> None:
    """Refuse a pickle with more opcodes than a batch has, before executing any of it."""
    for n, _ in enumerate(pickletools.genops(data), 1):
        if n > MAX_OPCODES:
            raise pickle.UnpicklingError(f"more than {MAX_OPCODES:,} objects: not a CIFAR-10 batch")


def _materialise(obj: object, depth: int = 0) -> object:
    """Replace the stand-ins by the numpy arrays and dtypes they checked and built."""
    if depth > _MAX_DEPTH:
        raise pickle.UnpicklingError(f"objects nested more than {_MAX_DEPTH} deep: not a CIFAR-10 batch")
    if isinstance(obj, _Array):
        if obj.array is None:
            raise pickle.UnpicklingError("array without data")
        return obj.array
    if isinstance(obj, _Dtype):
        return obj.dtype
    if obj is _NDARRAY:
        return np.ndarray
    if isinstance(obj, dict):
        return {_materialise(k, depth + 1): _materialise(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_materialise(v, depth + 1) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def safe_loads(data: bytes, what: str) -> object:
    """Unpickle `data` admitting only numpy array reconstruction, within a CIFAR-10 batch's sizes.

    `what` names the file in error messages.
    """
    try:
        _count_opcodes(data)
        return _materialise(_RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load())
    except pickle.UnpicklingError as exc:
        raise DataError(f"{what}: unsafe or invalid pickle ({exc})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
            UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise DataError(f"{what}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None
