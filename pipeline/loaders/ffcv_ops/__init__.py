"""FFCV pieces of the ffcv backend: Operations in the style of ffcv/transforms, and their helpers.

- `TranslateFlip`: steps 1-2 (pad-4 translate, flip), uint8 -> uint8;
- `PCAJitterNormalise`: steps 3-4 (PCA jitter, clamp, normalise), uint8 -> float32;
- `EpochOrder`: the shared epoch order as an FFCV traversal order;
- `hashrng`: counter-based random parameters of (epoch key, split position);
- `runtime`: host arrays (epoch key, explicit parameters) the compiled code reads at call time.

Importing this package imports FFCV (and numba).
"""

from . import hashrng
from .order import EpochOrder
from .pca_jitter import PCAJitterNormalise
from .runtime import EpochKey, HostArray
from .translate_flip import TranslateFlip, explicit_geometry

__all__ = ["hashrng", "EpochKey", "EpochOrder", "HostArray", "PCAJitterNormalise", "TranslateFlip",
           "explicit_geometry"]
