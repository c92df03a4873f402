"""Is a converted folder what its manifest says it is? One API: `verify_dataset`.

A converted folder is trusted by everything downstream (training, resuming
against a recorded content_sha256, the benchmark), so this checks every claim
it makes against every other and, with `content`, against the bytes:

- the manifest: a JSON object of the right format and version, naming only
  plain files of this folder (a manifest naming `/dev/zero` or `/etc/shadow`,
  or a symbolic link leading out, is refused before anything is opened);
- each split file: its header and metadata (`split.read_meta`), that it
  holds the split its name says (files swapped or copied over each other), and
  that the manifest's record of it agrees (split, count, content_sha256);
- across splits: the same classes, statistics, seed, val size and source;
- with `content`: the images and labels read back hash to the recorded
  content_sha256, the labels are in range and counted as recorded, and every
  `.beton` the manifest lists has its recorded sha256.

The first disagreement raises DataError with one line naming the file and
what disagrees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError
from ..hashing import stream_hexdigests
from ..constants import MANIFEST, SHA256_HEX, SPLITS
from .split import FORMAT_NAME, SUFFIX, SplitMeta, check_format, read_content, read_meta
from .safeio import check_plain_name, open_regular, read_limited

BETON_SUFFIX = ".beton"
_MAX_MANIFEST = 1 << 20
# what every split records identically (the manifest records the last three too)
_SHARED = ("classes", "stats", "split_seed", "val_size", "source")


def read_manifest(root: Path) -> dict[str, Any]:
    """`root/manifest.json`, checked: format, version, and one well-formed record per file it names."""
    path = Path(root) / MANIFEST
    data = read_limited(path, _MAX_MANIFEST, inside=Path(root),
                        missing="missing: not a folder written by `alexpipe convert`")
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DataError(f"{path}: not valid JSON (corrupt, or not written by `alexpipe convert`)") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: a JSON {type(manifest).__name__}, not the object `alexpipe convert` writes")
    check_format(manifest, str(path), f"format {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise DataError(f"{path}: 'files' is {files!r}, not a map of the files it holds")
    for name, entry in files.items():
        _check_entry(path, name, entry)
    return manifest


def _check_entry(path: Path, name: str, entry: object) -> None:
    """One manifest record: a plain, known file name and a record that agrees with it."""
    check_plain_name(name, str(path))
    if not isinstance(entry, dict):
        raise DataError(f"{path}: the record of {name!r} is not an object")
    split = entry.get("split")
    if split not in SPLITS or name not in (f"{split}{SUFFIX}", f"{split}{BETON_SUFFIX}"):
        raise DataError(f"{path}: records {name!r} as split {split!r}; its files are named "
                        f"<split>{SUFFIX} or <split>{BETON_SUFFIX} with split one of {', '.join(SPLITS)}")
    n = entry.get("num_images")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DataError(f"{path}: the record of {name} has num_images {n!r}")
    key = "content_sha256" if name.endswith(SUFFIX) else "sha256"
    if not isinstance(entry.get(key), str) or not SHA256_HEX.fullmatch(entry[key]):
        raise DataError(f"{path}: the record of {name} has no valid {key}")


def recorded_splits(manifest: dict[str, Any]) -> list[str]:
    """The splits whose safetensors file a (checked) manifest lists, in train/val/test order."""
    return [s for s in SPLITS if f"{s}{SUFFIX}" in manifest["files"]]


def verify_dataset(root: Path, splits: Iterable[str], *, content: bool = True) -> dict[str, str]:
    """Check `root`'s manifest and the named splits; return {split: content_sha256}.

    With `content`, every named split file is read whole and the digests
    returned are computed from the bytes read (so a caller recording a
    dataset's identity records what is really there); its `.beton` files are
    re-hashed too. Without it, only headers and metadata are read and the
    recorded digests (checked to agree with the manifest) are returned.
    Raises DataError with one line on the first disagreement.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder written by `alexpipe convert`")
    manifest = read_manifest(root)
    files = manifest["files"]
    metas: dict[str, SplitMeta] = {}
    headers = {}
    for split in splits:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        name = f"{split}{SUFFIX}"
        if name not in files:
            why = " (it was converted with --val-size 0)" if split == "val" and manifest.get("val_size") == 0 else ""
            raise DataError(f"{root / MANIFEST}: lists no {name}{why}")
        path = root / name
        if not path.exists() and not path.is_symlink():
            raise DataError(f"{path}: listed in the manifest but missing")
        header, meta = read_meta(path, inside=root)
        _check_against_manifest(path, split, meta, files[name], manifest)
        headers[split], metas[split] = header, meta
    _check_splits_agree(root, metas)
    digests = {}
    for split, meta in metas.items():
        digests[split] = _check_content(headers[split], meta) if content else meta.content_sha256
    for name, entry in files.items():
        if name.endswith(BETON_SUFFIX) and entry["split"] in metas:
            _check_beton(root, name, entry, metas[entry["split"]], content)
    return digests


def _check_against_manifest(path: Path, split: str, meta: SplitMeta, entry: dict, manifest: dict) -> None:
    """The file holds the split its name says, and the manifest's record of it agrees."""
    if meta.split != split:
        raise DataError(f"{path}: holds the {meta.split!r} split, not {split!r} (files swapped or copied "
                        "over each other?)")
    if entry["split"] != split:
        raise DataError(f"{path.parent / MANIFEST}: records {path.name} as the {entry['split']!r} split")
    if entry["num_images"] != meta.num_images:
        raise DataError(f"{path}: holds {meta.num_images} images, the manifest records {entry['num_images']}")
    if entry["content_sha256"] != meta.content_sha256:
        raise DataError(f"{path}: content_sha256 {meta.content_sha256[:12]}... differs from the manifest's "
                        f"{entry['content_sha256'][:12]}... (file or manifest modified)")
    for key in ("split_seed", "val_size", "source", "classes"):  # older manifests have no "classes"
        if key in manifest and manifest[key] != _plain(getattr(meta, key)):
            raise DataError(f"{path}: {key} {_show(getattr(meta, key))} differ from the manifest's "
                            f"{_show(manifest[key])}")


def _check_splits_agree(root: Path, metas: dict[str, SplitMeta]) -> None:
    """Every split records the same classes, train statistics and provenance."""
    items = list(metas.items())
    for split, meta in items[1:]:
        first, ref = items[0]
        for key in _SHARED:
            if getattr(meta, key) != getattr(ref, key):
                raise DataError(f"{root / f'{split}{SUFFIX}'}: {key} differ from those of {first}{SUFFIX} "
                                f"({_show(getattr(meta, key))} vs {_show(getattr(ref, key))})")


def _plain(value: object) -> object:
    """As JSON would hold it (tuples are lists), for comparing with the manifest."""
    return list(value) if isinstance(value, tuple) else value


def _show(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_content(header, meta: SplitMeta) -> str:
    """Read the split's data; it must be what the metadata says. Returns the digest of what was read."""
    got = read_content(header)
    path = header.path
    if got.bad_label is not None:
        record, value = got.bad_label
        raise DataError(f"{path}: label {value} at record {record} is outside 0..{len(meta.classes) - 1}")
    if got.class_counts != meta.class_counts:
        raise DataError(f"{path}: per-class counts {got.class_counts} differ from the recorded {meta.class_counts}")
    if got.content_sha256 != meta.content_sha256:
        raise DataError(f"{path}: content does not match its recorded sha256 (images or labels modified)")
    if not got.source_index_ok:
        raise DataError(f"{path}: source_index holds negative or repeated positions")
    return got.content_sha256


def _check_beton(root: Path, name: str, entry: dict, meta: SplitMeta, content: bool) -> None:
    """A listed .beton exists as a regular file here and (with `content`) has its recorded sha256."""
    import hashlib

    path = root / name
    if entry["num_images"] != meta.num_images:
        raise DataError(f"{root / MANIFEST}: records {entry['num_images']} images in {name}, "
                        f"the {entry['split']} split holds {meta.num_images}")
    with open_regular(path, inside=root, missing="listed in the manifest but missing") as f:
        if not content:
            return
        digest = stream_hexdigests(f, "sha256")[0]
    if digest != entry["sha256"]:
        raise DataError(f"{path}: sha256 differs from the manifest (modified or corrupt)")
