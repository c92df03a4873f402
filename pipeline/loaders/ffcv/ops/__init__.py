"""FFCV pieces of the ffcv backend: Operations in the style of ffcv/transforms, and their helpers.

- `TranslateFlip`: steps 1-2 (pad-4 translate, flip), uint8 -> uint8;
- `PCAJitterNormalise`: steps 3-4 (PCA jitter, clamp, normalise), uint8 -> float32;
- `EpochOrder`: the shared epoch order as an FFCV traversal order;
- `runtime`: the epoch's parameter tables, which the compiled code reads at call time.

Importing this package imports FFCV (and numba).
"""

from .order import EpochOrder
from .pca_jitter import PCAJitterNormalise
from .runtime import HostArray, ParamTables
from .translate_flip import TranslateFlip

__all__ = ["EpochOrder", "HostArray", "PCAJitterNormalise", "ParamTables", "TranslateFlip"]
