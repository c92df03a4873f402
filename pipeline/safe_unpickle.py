"""Load CIFAR-10's python-version batches without trusting them.

The official files are Python-2 pickles, and a pickle can call any importable
function. Genuine CIFAR-10 batches only ever reference numpy's array
reconstruction machinery, so that is all this unpickler admits; anything else
(os.system, builtins.eval, ...) is refused before it can run.
"""

from __future__ import annotations

import codecs
import io
import pickle

import numpy as np

from .errors import DataError

# numpy's own reconstructor, whatever module it lives in for this numpy version.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]

# (module, name) pairs a genuine batch may reference. numpy 2 moved
# numpy.core to numpy._core; a file re-pickled by numpy 2 names the new path,
# and Python 3's protocol 2 spells bytes as _codecs.encode(str, "latin1")
# (a pure function: it can only turn text into bytes).
_ALLOWED = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not part of a CIFAR-10 batch"
            ) from None


def safe_loads(data: bytes, what: str) -> object:
    """Unpickle `data` admitting only numpy array reconstruction.

    `what` names the file in error messages.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{what}: unsafe or invalid pickle ({exc})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise DataError(f"{what}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None
