"""The one meaning of the training augmentation (docs/design.md), and its implementations.

- `params`: the random parameters (dx, dy, flip, alpha) of each image, and their sources;
- `pca`: the 3x3 matrix M = V diag(s) that turns alpha into a colour shift;
- `reference`: plain NumPy, one image at a time: the definition;
- `batched`: the same maths as batched torch ops (resident loader, GPU tails).

The names below are imported on first use (PEP 562), so the command line can
list the PCA variants without importing NumPy.
"""

from __future__ import annotations

from alexpipe.lazy import lazy_exports

PCA_VARIANTS = ("blog", "paper", "off")  # pca.py defines what each one means

_EXPORTS = {name: ".params" for name in ("AugParams", "FixedParams", "ParamSource", "RandomParams", "PAD", "CROP",
                                         "MAX_OFFSET")}
_EXPORTS.update(pca_matrix=".pca", normalise_affine=".pca")

__all__ = ["PCA_VARIANTS", *_EXPORTS]


__getattr__ = lazy_exports(__name__, _EXPORTS)
