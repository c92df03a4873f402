"""The one meaning of the training augmentation (DESIGN.md), and its implementations.

- `params`: the random parameters (dx, dy, flip, alpha) of each image;
- `pca`: the 3x3 matrix M = V diag(s) that turns alpha into a colour shift;
- `reference`: plain NumPy, one image at a time: the definition;
- `batched`: the same maths as batched torch ops (resident loader, GPU tails).
"""

from .params import AugParams, PAD, CROP, MAX_OFFSET
from .pca import PCA_VARIANTS, pca_matrix, normalise_affine

__all__ = ["AugParams", "PAD", "CROP", "MAX_OFFSET", "PCA_VARIANTS", "pca_matrix", "normalise_affine"]
