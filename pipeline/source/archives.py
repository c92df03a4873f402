"""Read CIFAR-10 as users have it: python or binary version, archive or folder.

Everything is read into memory straight from the archive members (never
extracted to disk, so a hostile member name cannot write anywhere) and checked:
member names, record sizes, shapes, dtypes, label range and counts. Whatever
form the data came in, the result is the same NHWC uint8 arrays.

Nothing is read on the archive's word alone: a member (or a tar header
extension) larger than any CIFAR-10 file can be is refused by its declared
size before a byte of it is read, so a small compressed archive that declares
gigabytes cannot make convert use more memory than genuine data does.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from .download import OFFICIAL_MD5 as OFFICIAL_PYTHON_MD5
from ..constants import NUM_CLASSES
from ..errors import DataError
from ..hashing import file_hexdigests
from .unpickle import safe_loads

RECORD_PIXELS = 3072
TRAIN_BATCHES = 5
RECORDS_PER_BATCH = 10_000

# The largest file of either version. A binary batch is 30,730,000 bytes; the
# official python batches (Python 2 pickles) ~31,035,700: 30,720,000 pixel
# bytes + labels + file names, as are batches pickled by Python 3 with
# protocols 3 to 5. Protocols 1 and 2 store bytes as latin-1 text, UTF-8 in
# the pickle, where every byte above 0x7f takes two: up to 61,440,000 bytes
# of pixels (about 44.7 MB for the real batches); protocol 0 writes five byte
# values as six-byte escapes (about 34 MB for the real batches). So a batch
# may be twice its pixels and a margin; memory stays bounded by this all the same.
MAX_BATCH_BYTES = 64 << 20  # 67,108,864
MAX_META_BYTES = 1 << 20  # batches.meta is 158 bytes, batches.meta.txt 61
# An archive has 8 files and a folder; any other member is skipped unread, but
# still has to be decompressed, so its size and the number of members are capped too.
MAX_MEMBERS = 1000
MAX_HEADER_BYTES = 1 << 20  # a pax / GNU long-name header extension
# What the kept members may add up to: one version's batches and its meta file.
MAX_TOTAL_BYTES = (TRAIN_BATCHES + 1) * MAX_BATCH_BYTES + MAX_META_BYTES

OFFICIAL_MD5 = {
    "python": OFFICIAL_PYTHON_MD5,
    "binary": "c32a1d4ab5d03f1284b67883e8d87530",
}

# basenames of the files each version holds, in reading order
_LAYOUTS = {
    "python": {
        "train": [f"data_batch_{i}" for i in range(1, TRAIN_BATCHES + 1)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "binary": {
        "train": [f"data_batch_{i}.bin" for i in range(1, TRAIN_BATCHES + 1)],
        "test": ["test_batch.bin"],
        "meta": "batches.meta.txt",
    },
}


@dataclass
class RawSplit:
    images: np.ndarray  # (N, 32, 32, 3) uint8, C-contiguous
    labels: np.ndarray  # (N,) int64


@dataclass
class SourceInfo:
    kind: str  # "python-archive" | "binary-archive" | "python-folder" | "binary-folder"
    path: str
    sha256: str  # of the archive file, or of the batch files in reading order for a folder
    md5: str | None  # archives only
    md5_official: bool | None  # archives only


@dataclass
class RawCifar:
    train: RawSplit
    test: RawSplit
    classes: list[str]
    source: SourceInfo


Reader = Callable[[str], bytes]  # basename -> file bytes


def _check_member_name(name: str) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name:
        raise DataError(f"archive member {name!r} points outside the archive; refusing to read it")


_META_NAMES = frozenset(layout["meta"] for layout in _LAYOUTS.values())


def _size_limit(basename: str) -> int:
    """The most bytes a genuine file of this name can have."""
    return MAX_META_BYTES if basename in _META_NAMES else MAX_BATCH_BYTES


def _check_size(size: int, basename: str, what: str) -> None:
    limit = _size_limit(basename)
    if size > limit:
        kind = "meta file" if basename in _META_NAMES else "batch"
        raise DataError(f"{what}: declares {size:,} bytes, more than a CIFAR-10 {kind} can hold "
                        f"({limit:,}); refusing to read it")


def _find_layout(names: list[str], where: str) -> tuple[str, dict[str, str]]:
    """Pick the version whose files are present; map basename -> member name."""
    by_base: dict[str, list[str]] = {}
    for n in names:
        by_base.setdefault(PurePosixPath(n).name, []).append(n)
    best = None
    for version, layout in _LAYOUTS.items():
        wanted = layout["train"] + layout["test"] + [layout["meta"]]
        present = [b for b in wanted if b in by_base]
        if best is None or len(present) > len(best[1]):
            best = (version, present, wanted)
    version, present, wanted = best  # type: ignore[misc]
    if not present:
        raise DataError(
            f"no CIFAR-10 batches found in {where} (expected data_batch_1..5 and test_batch "
            "of the python version, or data_batch_1.bin..5 and test_batch.bin of the binary version)"
        )
    missing = [b for b in wanted if b not in present]
    if missing:
        raise DataError(f"{where} is missing {', '.join(missing)} of the CIFAR-10 {version} version")
    chosen: dict[str, str] = {}
    for b in wanted:
        if len(by_base[b]) > 1:
            raise DataError(f"{where} holds more than one {b}: {', '.join(sorted(by_base[b]))}")
        chosen[b] = by_base[b][0]
    parents = {str(PurePosixPath(m).parent) for m in chosen.values()}
    if len(parents) > 1:
        raise DataError(f"{where}: CIFAR-10 batch files are spread over several folders ({', '.join(sorted(parents))})")
    return version, chosen


def _parse_python_batch(data: bytes, what: str, allow_partial: bool) -> RawSplit:
    obj = safe_loads(data, what)
    if not isinstance(obj, dict):
        raise DataError(f"{what}: expected a dict with 'data' and 'labels', got {type(obj).__name__}")
    obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DataError(f"{what}: missing 'data' or 'labels' (keys: {', '.join(map(str, obj))})")
    pixels = obj["data"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        dt = getattr(pixels, "dtype", type(pixels).__name__)
        raise DataError(f"{what}: 'data' must be a uint8 array, got {dt}")
    if pixels.ndim != 2 or pixels.shape[1] != RECORD_PIXELS:
        raise DataError(f"{what}: 'data' must have shape (N, {RECORD_PIXELS}), got {pixels.shape}")
    labels_in = obj["labels"]
    if not isinstance(labels_in, (list, tuple, np.ndarray)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels_in
    ):
        raise DataError(f"{what}: 'labels' must be a list of integers")
    # range first: a Python int may be any size (2**70 does not fit an int64)
    for i, v in enumerate(labels_in):
        if not 0 <= v < NUM_CLASSES:
            raise DataError(f"{what}: label {int(v)} at record {i} is outside 0..{NUM_CLASSES - 1}")
    labels = np.asarray(labels_in, dtype=np.int64).reshape(-1)
    return _finish(pixels, labels, what, allow_partial)


def _parse_binary_batch(data: bytes, what: str, allow_partial: bool) -> RawSplit:
    record = RECORD_PIXELS + 1
    if len(data) == 0 or len(data) % record:
        raise DataError(f"{what}: size {len(data)} bytes is not a whole number of {record}-byte records")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    return _finish(rec[:, 1:], rec[:, 0].astype(np.int64), what, allow_partial)


def _finish(pixels: np.ndarray, labels: np.ndarray, what: str, allow_partial: bool) -> RawSplit:
    n = pixels.shape[0]
    if labels.shape[0] != n:
        raise DataError(f"{what}: {n} images but {labels.shape[0]} labels")
    if n == 0:
        raise DataError(f"{what}: holds no images")
    if n != RECORDS_PER_BATCH and not allow_partial:
        raise DataError(
            f"{what}: holds {n} images, expected {RECORDS_PER_BATCH} (pass --allow-partial for a subset)"
        )
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what}: label {int(labels[i])} at record {i} is outside 0..{NUM_CLASSES - 1}")
    # R plane, G plane, B plane (row-major each) -> HWC
    images = np.ascontiguousarray(pixels.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    return RawSplit(images=images, labels=labels)


def _parse_meta(data: bytes, version: str, what: str) -> list[str]:
    if version == "python":
        obj = safe_loads(data, what)
        names = obj.get("label_names") if isinstance(obj, dict) else None
        if names is None and isinstance(obj, dict):
            names = obj.get(b"label_names")
        if not isinstance(names, list):
            raise DataError(f"{what}: no 'label_names' list")
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    else:
        try:
            names = [line.strip() for line in data.decode("ascii").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise DataError(f"{what}: not a text file of class names") from None
    if len(names) != NUM_CLASSES or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != NUM_CLASSES:
        raise DataError(f"{what}: expected {NUM_CLASSES} distinct class names, got {names!r}")
    return names


def _concat(parts: list[RawSplit]) -> RawSplit:
    return RawSplit(
        images=np.concatenate([p.images for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
    )


def _read(version: str, members: dict[str, str], read: Reader, where: str,
          allow_partial: bool, step: Callable[[str], None]) -> tuple[RawSplit, RawSplit, list[str]]:
    layout = _LAYOUTS[version]
    parse = _parse_python_batch if version == "python" else _parse_binary_batch
    classes = _parse_meta(read(members[layout["meta"]]), version, f"{where}:{layout['meta']}")
    splits = {}
    for split in ("train", "test"):
        parts = []
        for base in layout[split]:
            step(base)
            parts.append(parse(read(members[base]), f"{where}:{members[base]}", allow_partial))
        splits[split] = _concat(parts)
    return splits["train"], splits["test"], classes


def read_cifar10(path: Path, allow_partial: bool = False,
                 step: Callable[[str], None] = lambda name: None) -> RawCifar:
    """Read CIFAR-10 from an archive (python/binary, any tar compression) or a folder.

    `step` is called with each batch's name before it is read (for progress).
    Raises DataError with a one-line message on anything unexpected.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path, allow_partial, step)
    return _read_archive(path, allow_partial, step)


class _HeaderRefused(Exception):
    """A tar header refused before tarfile reads what it declares (the path is added by the caller)."""


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header extension whole, at whatever
    size its header declares, before the member is even seen: refuse large ones
    (and sparse members, which CIFAR-10 never has) before that read."""

    def _proc_member(self, tarfile_):  # noqa: D401 - tarfile's hook
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                         tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) and self.size > MAX_HEADER_BYTES:
            raise _HeaderRefused(f"a tar header extension declares {self.size:,} bytes (at most "
                                 f"{MAX_HEADER_BYTES:,} expected); refusing to read it")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _HeaderRefused(f"member {self.name!r} is a sparse file; CIFAR-10 has none")
        return super()._proc_member(tarfile_)


def _read_archive(path: Path, allow_partial: bool, step: Callable[[str], None]) -> RawCifar:
    # One sequential pass ("r|*"): a compressed tar has no index, so listing it
    # first and then seeking back to each member would decompress it twice.
    corrupt = (tarfile.TarError, OSError, EOFError, zlib.error)
    wanted = {b for layout in _LAYOUTS.values() for b in layout["train"] + layout["test"] + [layout["meta"]]}
    blobs: dict[str, bytes] = {}
    seen: dict[str, str] = {}  # basename -> member name
    kept = 0
    try:
        with tarfile.open(path, mode="r|*", bufsize=1 << 20, tarinfo=_BoundedTarInfo) as tar:
            for count, info in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise DataError(f"{path}: more than {MAX_MEMBERS:,} members; not a CIFAR-10 archive")
                tar.members.clear()  # stream mode keeps every header seen otherwise
                _check_member_name(info.name)
                base = PurePosixPath(info.name).name
                if not info.isfile():
                    continue
                # every file is bounded, kept or not: skipping one still means decompressing it
                _check_size(info.size, base if base in wanted else "", f"{path}:{info.name}")
                if base not in wanted:
                    continue
                if base in seen:
                    raise DataError(f"{path} holds more than one {base}: {seen[base]}, {info.name}")
                seen[base] = info.name
                kept += info.size
                if kept > MAX_TOTAL_BYTES:
                    raise DataError(f"{path}: its CIFAR-10 files add up to more than {MAX_TOTAL_BYTES:,} bytes "
                                    "(both the python and the binary version?); convert one version at a time")
                f = tar.extractfile(info)
                data = f.read(info.size) if f is not None else b""
                if len(data) != info.size:
                    raise DataError(f"{path}:{info.name}: archive is truncated ({len(data)} of {info.size} bytes)")
                blobs[info.name] = data
    except corrupt as exc:
        raise DataError(f"{path}: not a readable tar archive, or truncated/corrupt ({exc})") from None
    except _HeaderRefused as exc:
        raise DataError(f"{path}: {exc}") from None
    version, members = _find_layout(list(blobs), str(path))
    # pop: each member's bytes are freed as soon as it is parsed
    train, test, classes = _read(version, members, blobs.pop, str(path), allow_partial, step)
    sha, md5 = file_hexdigests(path, "sha256", "md5")
    info = SourceInfo(kind=f"{version}-archive", path=str(path), sha256=sha, md5=md5,
                      md5_official=(md5 == OFFICIAL_MD5[version]))
    return RawCifar(train=train, test=test, classes=classes, source=info)


def _read_bounded(file: Path, limit: int) -> bytes:
    """The bytes of a regular file no larger than `limit`, never reading more than that."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{file}: not a regular file")
        _check_size(st.st_size, file.name, str(file))
        data = f.read(limit + 1)
    _check_size(len(data), file.name, str(file))  # it grew while being read
    return data


def _read_folder(path: Path, allow_partial: bool, step: Callable[[str], None]) -> RawCifar:
    names = []
    for sub in (path, *(path / d for d in ("cifar-10-batches-py", "cifar-10-batches-bin"))):
        if sub.is_dir():
            names += [str(p.relative_to(path).as_posix()) for p in sub.iterdir() if p.is_file()]
    version, members = _find_layout(names, str(path))
    sha = hashlib.sha256()

    def read(name: str) -> bytes:
        try:
            data = _read_bounded(path / name, _size_limit(PurePosixPath(name).name))
        except OSError as exc:
            raise DataError(f"{path / name}: cannot read ({exc.strerror})") from None
        sha.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        return data

    train, test, classes = _read(version, members, read, str(path), allow_partial, step)
    info = SourceInfo(kind=f"{version}-folder", path=str(path), sha256=sha.hexdigest(), md5=None, md5_official=None)
    return RawCifar(train=train, test=test, classes=classes, source=info)
