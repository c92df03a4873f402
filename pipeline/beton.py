"""FFCV `.beton` copies of the converted splits, for the FFCV backend.

The images are stored raw (no JPEG), so FFCV decodes exactly the pixels of the
safetensors file; the label is an int field.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

FFCV_HINT = ("FFCV is not installed, so no .beton files were written (the ffcv backend needs them): "
             "apt-get install pkg-config libopencv-dev libturbojpeg0-dev && pip install 'alexpipe[ffcv]', "
             "then run convert again")


def ffcv_available() -> bool:
    try:
        import ffcv.writer  # noqa: F401
    except Exception:  # ImportError, or a broken numba/opencv underneath
        return False
    return True


def beton_path(root: Path | str, split: str) -> Path:
    return Path(root) / f"{split}.beton"


class _Pairs:
    """The indexed dataset FFCV's writer wants: (HWC uint8 image, int label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


def write_beton(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {"image": RGBImageField(write_mode="raw", max_resolution=max(images.shape[1:3])),
              "label": IntField()}
    writer = DatasetWriter(str(path), fields, num_workers=max(1, min(4, os.cpu_count() or 1)))
    # FFCV draws its own tqdm bars on stderr; convert already shows one
    with contextlib.redirect_stderr(io.StringIO()):
        writer.from_indexed_dataset(_Pairs(images, labels))
