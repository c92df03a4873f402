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
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .stats import ChannelStats

FORMAT_NAME = "alexpipe-cifar10"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SUFFIX = ".safetensors"

_DTYPES = {"U8": np.uint8, "I64": np.int64}
_TENSORS = {"images": "U8", "labels": "I64", "source_index": "I64"}


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
    def from_metadata(cls, md: dict[str, str], where: str) -> "SplitMeta":
        try:
            v = {k: json.loads(x) for k, x in md.items()}
            if v.get("format") != FORMAT_NAME:
                raise DataError(f"{where}: not an alexpipe CIFAR-10 file (format {v.get('format')!r})")
            if v["format_version"] != FORMAT_VERSION:
                raise DataError(
                    f"{where}: format version {v['format_version']} is not {FORMAT_VERSION}; "
                    "convert the data again with this alexpipe"
                )
            stats = ChannelStats(
                mean=tuple(v["mean"]), std=tuple(v["std"]),
                eigenvalues=tuple(v["pca_eigenvalues"]),
                eigenvectors=tuple(tuple(r) for r in v["pca_eigenvectors"]),
            )
            return cls(
                split=v["split"], classes=tuple(v["classes"]), num_images=int(v["num_images"]),
                class_counts=tuple(v["class_counts"]), stats=stats,
                content_sha256=v["content_sha256"], split_seed=int(v["split_seed"]),
                val_size=int(v["val_size"]), source=v["source"],
                format_version=int(v["format_version"]), created_utc=v["created_utc"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: metadata is incomplete or malformed ({exc})") from None


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


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse the safetensors header; return it and the offset of the data section."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DataError(f"{path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise DataError(f"{path}: corrupt safetensors header (length {n})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (did you run `alexpipe convert`?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: corrupt safetensors header") from None
    start = 8 + n
    for name, dtype in _TENSORS.items():
        t = header.get(name)
        if not isinstance(t, dict) or t.get("dtype") != dtype:
            raise DataError(f"{path}: tensor {name!r} missing or not {dtype}")
        b, e = t["data_offsets"]
        count = int(np.prod(t["shape"])) * np.dtype(_DTYPES[dtype]).itemsize
        if e - b != count or start + e > size:
            raise DataError(f"{path}: tensor {name!r} runs past the end of the file (truncated?)")
    return header, start


@dataclass
class Split:
    """One split of a converted dataset. On CPU the tensors are views of the file."""

    images: torch.Tensor  # uint8 (N, 32, 32, 3)
    labels: torch.Tensor  # int64 (N,)
    source_index: torch.Tensor  # int64 (N,)
    meta: SplitMeta
    path: Path

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> "Split":
        """Move the tensors to `device` (one copy each, no intermediate)."""
        d = torch.device(device)
        return Split(self.images.to(d), self.labels.to(d), self.source_index.to(d), self.meta, self.path)

    def subset(self, index: torch.Tensor | np.ndarray) -> "Split":
        """The images at `index`, in that order (a copy)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return Split(self.images[idx], self.labels[idx], self.source_index[idx], self.meta, self.path)


def load_split(root: Path | str, split: str) -> Split:
    """Open `root/<split>.safetensors` without reading it: the arrays are memory maps."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = split_path(root, split)
    if not path.exists() and Path(root).is_dir() and split == "val" and split_path(root, "train").exists():
        raise DataError(f"{root} has no val split (it was converted with --val-size 0)")
    header, start = _read_header(path)
    meta = SplitMeta.from_metadata(header.get("__metadata__") or {}, str(path))
    arrays = {}
    for name, dtype in _TENSORS.items():
        t = header[name]
        shape = tuple(t["shape"])
        if 0 in shape:
            arrays[name] = torch.from_numpy(np.zeros(shape, dtype=_DTYPES[dtype]))
            continue
        # copy-on-write map: zero-copy, and torch gets a writable buffer
        mm = np.memmap(path, dtype=_DTYPES[dtype], mode="c", offset=start + t["data_offsets"][0], shape=shape)
        arrays[name] = torch.from_numpy(mm)
    if arrays["images"].shape[1:] != (32, 32, 3) or arrays["images"].shape[0] != meta.num_images \
            or arrays["labels"].shape != (meta.num_images,):
        raise DataError(f"{path}: shapes {tuple(arrays['images'].shape)} / {tuple(arrays['labels'].shape)} "
                        f"do not match the {meta.num_images} images its metadata records")
    return Split(arrays["images"], arrays["labels"], arrays["source_index"], meta, path)


def verify_split(s: Split) -> None:
    """Full integrity check: content hash, label range, counts. Reads the whole file."""
    labels = s.labels.numpy()
    if labels.size and (labels.min() < 0 or labels.max() >= len(s.meta.classes)):
        raise DataError(f"{s.path}: labels outside 0..{len(s.meta.classes) - 1}")
    counts = tuple(int(c) for c in np.bincount(labels, minlength=len(s.meta.classes)))
    if counts != tuple(s.meta.class_counts):
        raise DataError(f"{s.path}: per-class counts {counts} differ from the recorded {s.meta.class_counts}")
    if content_digest(s.images.numpy(), labels) != s.meta.content_sha256:
        raise DataError(f"{s.path}: content does not match its recorded sha256 (file modified or corrupt)")


def fsync_dir(path: Path) -> None:
    """Make a rename into `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
