"""The converted file: one safetensors file per split.

safetensors is a header of JSON plus raw little-endian arrays, with no code
in it (unlike pickle / torch.save), readable by its own small library in any
language, and trivially memory-mappable: the images of a split are a view of
the file, so opening it costs milliseconds and the page cache shares it between
processes (DataLoader workers, DDP ranks).

Tensors:  images uint8 (N, 32, 32, 3) NHWC; labels int64 (N,);
          source_index int64 (N,) = the image's position in the official split.
Metadata: every value is a JSON document (see README, "The converted format").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ..constants import IMAGE_SHAPE, NUM_CLASSES, SHA256_HEX, SPLITS
from ..errors import DataError
from .safeio import open_regular, ordinary_mode
from .stats import ChannelStats

if TYPE_CHECKING:  # torch is imported only where a Split is made: `alexpipe info` never needs it
    import torch

FORMAT_NAME = "alexpipe-cifar10"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"

_DTYPES = {"U8": np.uint8, "I64": np.int64}
_TENSORS = {"images": "U8", "labels": "I64", "source_index": "I64"}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class SplitMeta:
    split: str
    classes: tuple[str, ...]
    num_images: int
    class_counts: tuple[int, ...]
    stats: ChannelStats
    content_sha256: str
    split_seed: int
    val_size: int
    source: dict[str, Any]  # kind, sha256, md5, md5_official
    format_version: int
    created_utc: str

    def to_metadata(self) -> dict[str, str]:
        s = self.stats
        fields = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "split": self.split,
            "classes": list(self.classes),
            "num_images": self.num_images,
            "class_counts": list(self.class_counts),
            "stats_split": "train",
            "mean": list(s.mean),
            "std": list(s.std),
            "pca_eigenvalues": list(s.eigenvalues),
            "pca_eigenvectors": [list(r) for r in s.eigenvectors],
            "content_sha256": self.content_sha256,
            "split_seed": self.split_seed,
            "val_size": self.val_size,
            "source": self.source,
            "created_utc": self.created_utc,
        }
        return {k: json.dumps(v) for k, v in fields.items()}

    @classmethod
    def from_metadata(cls, md: object, where: str) -> "SplitMeta":
        """Parse and check a file's metadata: every field present, of its type, and plausible.

        Each failure is one line naming `where` and the field, never a traceback:
        the metadata is whatever bytes the file holds.
        """
        if not isinstance(md, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in md.items()):
            raise DataError(f"{where}: metadata is missing or not a map of strings")
        v = {}
        for k, x in md.items():
            try:
                v[k] = json.loads(x)
            except (ValueError, RecursionError):
                raise DataError(f"{where}: metadata {k!r} is not valid JSON") from None
        check_format(v, where, f"not an alexpipe CIFAR-10 file (format {v.get('format')!r})")
        field = _Fields(v, where)
        split = field.get("split", str)
        if split not in SPLITS:
            raise DataError(f"{where}: metadata split {split!r} is not one of {', '.join(SPLITS)}")
        classes = field.get("classes", list)
        if len(classes) != NUM_CLASSES or not all(isinstance(c, str) and c for c in classes) \
                or len(set(classes)) != NUM_CLASSES:
            raise DataError(f"{where}: classes {classes!r} are not {NUM_CLASSES} distinct names")
        num_images = field.count("num_images")
        counts = field.get("class_counts", list)
        if len(counts) != NUM_CLASSES or not all(_is_count(c) for c in counts) or sum(counts) != num_images:
            raise DataError(f"{where}: class_counts {counts!r} are not {NUM_CLASSES} counts adding up to "
                            f"num_images {num_images}")
        stats = ChannelStats(mean=field.numbers("mean", 3), std=field.numbers("std", 3),
                             eigenvalues=field.numbers("pca_eigenvalues", 3),
                             eigenvectors=field.matrix("pca_eigenvectors"))
        problem = stats.implausible()
        if problem:
            raise DataError(f"{where}: implausible statistics: {problem}")
        digest = field.get("content_sha256", str)
        if not SHA256_HEX.fullmatch(digest):
            raise DataError(f"{where}: content_sha256 {digest!r} is not a sha256 hex digest")
        return cls(split=split, classes=tuple(classes), num_images=num_images, class_counts=tuple(counts),
                   stats=stats, content_sha256=digest, split_seed=field.count("split_seed"),
                   val_size=field.count("val_size"), source=field.get("source", dict),
                   format_version=FORMAT_VERSION, created_utc=field.get("created_utc", str))


def check_format(record: dict, where: str, foreign: str) -> None:
    """`record` (a split's metadata, the manifest) must say this format and version: DataError naming `where`,
    with `foreign` as the reason when the format is another one."""
    if record.get("format") != FORMAT_NAME:
        raise DataError(f"{where}: {foreign}")
    if record.get("format_version") != FORMAT_VERSION or isinstance(record.get("format_version"), bool):
        raise DataError(f"{where}: format version {record.get('format_version')!r} is not {FORMAT_VERSION}; "
                        "convert the data again with this alexpipe")


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class _Fields:
    """Typed access to parsed metadata, each miss one DataError naming the field."""

    def __init__(self, values: dict[str, Any], where: str):
        self.values, self.where = values, where

    def get(self, key: str, kind: type) -> Any:
        if key not in self.values:
            raise DataError(f"{self.where}: metadata has no {key!r}")
        x = self.values[key]
        if not isinstance(x, kind):
            raise DataError(f"{self.where}: metadata {key!r} is {type(x).__name__}, expected {kind.__name__}")
        return x

    def count(self, key: str) -> int:
        x = self.values.get(key)
        if not _is_count(x):
            raise DataError(f"{self.where}: metadata {key!r} is {x!r}, expected a non-negative integer")
        return x

    def numbers(self, key: str, n: int) -> tuple[float, ...]:
        x = self.get(key, list)
        if len(x) != n or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in x):
            raise DataError(f"{self.where}: metadata {key!r} is not a list of {n} numbers")
        return tuple(float(e) for e in x)

    def matrix(self, key: str) -> tuple[tuple[float, ...], ...]:
        rows = self.get(key, list)
        if len(rows) != 3 or not all(isinstance(r, list) for r in rows):
            raise DataError(f"{self.where}: metadata {key!r} is not a 3x3 matrix")
        return tuple(_Fields({key: r}, self.where).numbers(key, 3) for r in rows)


def content_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """Identity of a split's data: sha256 of the image bytes then the int64 label bytes."""
    h = hashlib.sha256()
    h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(labels, dtype="<i8")).cast("B"))
    return h.hexdigest()


def split_path(root: Path | str, split: str) -> Path:
    return Path(root) / f"{split}{SUFFIX}"


def write_split(path: Path, images: np.ndarray, labels: np.ndarray, source_index: np.ndarray,
                meta: SplitMeta) -> None:
    """Write one split with safetensors' own writer."""
    from safetensors.numpy import save_file

    save_file(
        {"images": np.ascontiguousarray(images), "labels": labels.astype(np.int64),
         "source_index": source_index.astype(np.int64)},
        str(path), metadata=meta.to_metadata(),
    )
    ordinary_mode(path)  # safetensors writes through a private temporary file


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


@dataclass(frozen=True)
class Header:
    """A split file's safetensors header, checked: the three tensors, where they lie, the raw metadata."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    size: int


def read_header(path: Path, *, inside: Path | None = None) -> Header:
    """Parse and check the safetensors header of `path` (reads only the header).

    Anything malformed (offsets missing, negative, overlapping or past the
    end; a shape that is not a list of sizes; a length that lies) is one
    DataError naming the file. `inside`: refuse a symbolic link leading out of that folder.
    """
    with open_regular(path, inside=inside, missing="no such file (did you run `alexpipe convert`?)") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise DataError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > min(size - 8, _MAX_HEADER):
            raise DataError(f"{path}: corrupt safetensors header (length {n})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise DataError(f"{path}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: corrupt safetensors header (not a JSON object)")
    unknown = sorted(set(header) - set(_TENSORS) - {"__metadata__"})
    if unknown:
        raise DataError(f"{path}: unexpected tensor {unknown[0]!r} (an alexpipe split holds "
                        f"{', '.join(_TENSORS)})")
    start = 8 + n
    tensors = {name: _tensor_info(path, name, header.get(name), dtype, start, size)
               for name, dtype in _TENSORS.items()}
    spans = sorted((t.begin, t.end, name) for name, t in tensors.items())
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise DataError(f"{path}: tensors {a!r} and {b!r} overlap")
    return Header(path=Path(path), tensors=tensors, metadata=header.get("__metadata__"), size=size)


def _tensor_info(path: Path, name: str, t: object, dtype: str, start: int, size: int) -> TensorInfo:
    """One tensor's header entry, checked against the file's size."""
    if not isinstance(t, dict) or t.get("dtype") != dtype:
        raise DataError(f"{path}: tensor {name!r} missing or not {dtype}")
    shape, offsets = t.get("shape"), t.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(d) for d in shape):
        raise DataError(f"{path}: tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        raise DataError(f"{path}: tensor {name!r} has data_offsets {offsets!r}, not [begin, end] in the file")
    begin, end = offsets
    if end - begin != math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize:
        raise DataError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {tuple(shape)}")
    if start + end > size:
        raise DataError(f"{path}: tensor {name!r} runs past the end of the file (truncated?)")
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=start + begin, end=start + end)


def check_shapes(header: Header, meta: SplitMeta) -> None:
    """The tensors hold exactly the `num_images` images the metadata records."""
    n = meta.num_images
    want = {"images": (n, *IMAGE_SHAPE), "labels": (n,), "source_index": (n,)}
    for name, shape in want.items():
        if header.tensors[name].shape != shape:
            raise DataError(f"{header.path}: tensor {name!r} has shape {header.tensors[name].shape}, but the "
                            f"metadata records {n} images {shape}")


def read_meta(path: Path, *, inside: Path | None = None) -> tuple[Header, SplitMeta]:
    """A split file's header and metadata, both checked, and consistent with each other."""
    header = read_header(path, inside=inside)
    meta = SplitMeta.from_metadata(header.metadata, str(path))
    check_shapes(header, meta)
    return header, meta


@dataclass(frozen=True)
class Content:
    """What a split file's data actually is, from reading all of it."""

    content_sha256: str
    class_counts: tuple[int, ...]
    bad_label: tuple[int, int] | None  # (record, value) of the first label outside 0..9
    source_index_ok: bool  # non-negative and no position twice


def read_content(header: Header, chunk: int = 4 << 20) -> Content:
    """Read the images and labels bytes of a checked header and hash them as `content_digest` does."""
    h = hashlib.sha256()
    with open_regular(header.path) as f:
        _hash_range(f, header, "images", h, chunk)
        labels = np.frombuffer(_read_range(f, header, "labels"), dtype="<i8")
        h.update(memoryview(labels).cast("B"))
        index = np.frombuffer(_read_range(f, header, "source_index"), dtype="<i8")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    bad_label = (int(bad[0]), int(labels[bad[0]])) if bad.size else None
    counts = np.bincount(labels[(labels >= 0) & (labels < NUM_CLASSES)], minlength=NUM_CLASSES)
    index_ok = bool((index >= 0).all()) and np.unique(index).size == index.size
    return Content(h.hexdigest(), tuple(int(c) for c in counts), bad_label, index_ok)


def _hash_range(f: BinaryIO, header: Header, name: str, h: "hashlib._Hash", chunk: int) -> None:
    t = header.tensors[name]
    f.seek(t.begin)
    left = t.end - t.begin
    while left:
        block = f.read(min(chunk, left))
        if not block:
            raise DataError(f"{header.path}: tensor {name!r} ends early (file truncated while being read?)")
        h.update(block)
        left -= len(block)


def _read_range(f: BinaryIO, header: Header, name: str) -> bytes:
    t = header.tensors[name]
    f.seek(t.begin)
    data = f.read(t.end - t.begin)
    if len(data) != t.end - t.begin:
        raise DataError(f"{header.path}: tensor {name!r} ends early (file truncated while being read?)")
    return data


@dataclass
class Split:
    """One split of a converted dataset. On CPU the tensors are views of the file."""

    images: "torch.Tensor"  # uint8 (N, 32, 32, 3)
    labels: "torch.Tensor"  # int64 (N,)
    source_index: "torch.Tensor"  # int64 (N,)
    meta: SplitMeta
    path: Path

    def __len__(self) -> int:
        return self.labels.shape[0]


def load_split(root: Path | str, split: str) -> Split:
    """Open `root/<split>.safetensors` without reading it: the arrays are memory maps.

    The header and metadata are checked first (`read_meta`), so a malformed
    file is one DataError, never a traceback from deep inside numpy or torch.
    """
    import torch

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = split_path(root, split)
    if not path.exists() and Path(root).is_dir() and split == "val" and split_path(root, "train").exists():
        raise DataError(f"{root} has no val split (it was converted with --val-size 0)")
    header, meta = read_meta(path)
    arrays = {}
    for name, dtype in _TENSORS.items():
        t = header.tensors[name]
        if 0 in t.shape:
            arrays[name] = torch.from_numpy(np.zeros(t.shape, dtype=_DTYPES[dtype]))
            continue
        # copy-on-write map: zero-copy, and torch gets a writable buffer
        mm = np.memmap(path, dtype=_DTYPES[dtype], mode="c", offset=t.begin, shape=t.shape)
        arrays[name] = torch.from_numpy(mm)
    return Split(arrays["images"], arrays["labels"], arrays["source_index"], meta, path)
