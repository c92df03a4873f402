"""FFCV `.beton` copies of the converted splits, for the FFCV backend.

The images are stored raw (no JPEG), so FFCV decodes exactly the pixels of the
safetensors file; the label is an int field.

The file is written here, in this process, sequentially, rather than by
FFCV's `DatasetWriter`. That writer forks worker processes (each a copy of the
converting process, ~790 MB with the real data), shares metadata through a
named /dev/shm segment, and has the main thread poll a counter the workers
update: Ctrl-C during it hung convert forever, and `kill -9` left the workers
running under init, the segment in /dev/shm, and the temporary folder behind.
For raw fixed-size images the layout is simple arithmetic: this writes the
same bytes the `DatasetWriter` writes with one worker, with no child process
and no shared memory.

Writing needs no FFCV import either (importing FFCV pulls in numba and torch:
seconds, and ~900 MB of memory): the on-disk layout of FFCV 1.0.x's format
version 2 is spelled out below, and the tests check it against FFCV's own
definitions and against the bytes FFCV's writer produces.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import BinaryIO

import numpy as np

FFCV_INSTALL = "apt-get install pkg-config libopencv-dev libturbojpeg0-dev && pip install 'alexpipe[ffcv]'"
FFCV_HINT = (f"FFCV is not installed, so no .beton files were written (the ffcv backend needs them): {FFCV_INSTALL}, "
             "then run convert again")
PAGE_SIZE = 8 << 20  # FFCV's default (4 x its 2 MiB minimum)

# FFCV's format version 2 (ffcv/types.py, ffcv/fields/*.py of FFCV 1.0.x)
FORMAT_VERSION = 2
HEADER_TYPE = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                        ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC_TYPE = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC_TABLE_TYPE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
RGB_METADATA_TYPE = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
INT_METADATA_TYPE = np.dtype("<i8")
# (name, FFCV type id, per-sample metadata) of the two fields, in order
FIELDS = (("image", 2, RGB_METADATA_TYPE), ("label", 1, INT_METADATA_TYPE))
RAW_IMAGE_MODE = 1  # FFCV's IMAGE_MODES["raw"] ("jpg" is 0)
METADATA_TYPE = np.dtype([("", md) for _, _, md in FIELDS], align=True)


def ffcv_works() -> bool:
    """Whether FFCV imports, with everything it needs underneath (numba, OpenCV): what reading a .beton takes.
    Slow (seconds, ~900 MB): `ffcv_present` answers whether it is there at all without importing it."""
    try:
        import ffcv.writer  # noqa: F401
    except Exception:  # ImportError, or a broken numba/opencv underneath
        return False
    return True


def ffcv_present() -> bool:
    """Whether FFCV is installed, without importing it (which takes seconds and ~900 MB): enough to decide
    whether to write .beton files, not to promise they can be read (`ffcv_works`)."""
    return importlib.util.find_spec("ffcv") is not None


def beton_path(root: Path | str, split: str) -> Path:
    return Path(root) / f"{split}.beton"


def write_beton(path: Path, images: np.ndarray, labels: np.ndarray, *, page_size: int = PAGE_SIZE) -> None:
    """Write (N, H, W, 3) uint8 images and their labels as an FFCV dataset: fields `image` (raw RGB) and `label` (int).

    Sample i is image i. Interruptible like any Python loop (Ctrl-C stops it
    within one page write); the file is written in one sequential pass.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) != len(labels) \
            or len(images) == 0:
        raise ValueError(f"expected N >= 1 (N, H, W, 3) uint8 images and N labels, got {images.shape} "
                         f"{images.dtype} and {labels.shape}")
    n, h, w, _ = images.shape
    item = h * w * 3
    per_page = page_size // item
    if per_page == 0 or page_size & (page_size - 1):
        raise ValueError(f"page size {page_size} is not a power of 2 holding an image of {item} bytes")

    descriptors = np.zeros(len(FIELDS), dtype=FIELD_DESC_TYPE)  # arguments: all zero for both fields
    for i, (name, type_id, _) in enumerate(FIELDS):
        descriptors[i]["type_id"] = type_id
        descriptors[i]["name"][: len(name)] = np.frombuffer(name.encode("ascii"), dtype="<u1")
    metadata_start = HEADER_TYPE.itemsize + descriptors.nbytes
    data_start = _align(metadata_start + n * METADATA_TYPE.itemsize, page_size)
    pages = -(-n // per_page)

    # sample i is the (i % per_page)-th image of page i // per_page
    index = np.arange(n, dtype=np.uint64)
    ptr = data_start + (index // per_page) * page_size + (index % per_page) * item
    metadata = np.zeros(n, dtype=METADATA_TYPE)
    image_md, label_md = (metadata[f] for f in METADATA_TYPE.names)
    image_md["mode"] = RAW_IMAGE_MODE
    image_md["height"], image_md["width"] = h, w
    image_md["data_ptr"] = ptr
    label_md[:] = labels
    allocations = np.zeros(n, dtype=ALLOC_TABLE_TYPE)
    allocations["sample_id"], allocations["ptr"], allocations["size"] = index, ptr, item

    header = np.zeros(1, dtype=HEADER_TYPE)[0]
    header["version"], header["num_samples"], header["num_fields"] = FORMAT_VERSION, n, len(FIELDS)
    header["page_size"], header["alloc_table_ptr"] = page_size, data_start + pages * page_size

    with open(path, "wb") as f:
        for part in (header.tobytes(), descriptors.tobytes(), metadata.tobytes()):
            f.write(part)
        f.write(bytes(data_start - f.tell()))
        for page in range(pages):
            _write_page(f, images[page * per_page:(page + 1) * per_page], page_size)
        f.write(allocations.tobytes())


def _align(offset: int, page_size: int) -> int:
    """The first page boundary at or after `offset` (FFCV's align_to_page)."""
    return -(-offset // page_size) * page_size


def _write_page(f: BinaryIO, images: np.ndarray, page_size: int) -> None:
    """One FFCV page: the images' raw HWC bytes back to back, zero-filled to the page size."""
    data = np.ascontiguousarray(images)
    f.write(memoryview(data).cast("B"))
    f.write(bytes(page_size - data.nbytes))
