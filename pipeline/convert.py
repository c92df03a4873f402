"""CIFAR-10 source -> converted folder (train / val / test), all or nothing.

Everything is written into a hidden temporary folder beside `out` and renamed
into place at the very end, so an error at any point leaves `out` exactly as
it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .beton import FFCV_HINT, beton_path, ffcv_available, write_beton
from .errors import DataError
from .hashing import file_hexdigests
from .fileformat import FORMAT_VERSION, SplitMeta, content_digest, fsync_dir, split_path, write_split
from .sources import NUM_CLASSES, RawCifar, read_cifar10
from .stats import ChannelStats, compute_stats

MANIFEST = "manifest.json"


def default_sources() -> list[Path]:
    """Where `convert` looks when no --source is given, in order."""
    places = []
    if os.environ.get("ALEXPIPE_CIFAR10"):
        places.append(Path(os.environ["ALEXPIPE_CIFAR10"]))
    from .cache import cache_dir

    places += [Path("cifar-10-python.tar.gz"), Path("cifar-10-batches-py"),
               cache_dir() / "cifar-10-python.tar.gz"]
    return places


def carve_val(labels: np.ndarray, val_size: int, seed: int,
              num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced held-out indices: val_size / num_classes per class, chosen by `seed`.

    Returns (train_index, val_index), both ascending, disjoint, covering all of `labels`.
    """
    if val_size < 0 or val_size % num_classes:
        raise DataError(f"--val-size must be a non-negative multiple of {num_classes} (class-balanced), got {val_size}")
    per_class = val_size // num_classes
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if per_class >= len(idx):
            raise DataError(f"--val-size {val_size} needs {per_class} images of class {c} "
                            f"but the train set has only {len(idx)} (some must remain for training)")
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    val = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[val] = False
    return np.flatnonzero(mask), val.astype(np.int64)


@dataclass
class SplitSummary:
    name: str
    num_images: int
    class_counts: tuple[int, ...]
    file: str


@dataclass
class ConvertSummary:
    out: Path
    classes: list[str]
    splits: list[SplitSummary]
    stats: ChannelStats
    source: dict
    betons: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


def steps_for(write_betons: bool) -> int:
    """How many times `convert` calls its `step` callback (for a progress bar)."""
    return 6 + 1 + 3 + (3 if write_betons else 0)


def convert(source: Path, out: Path, *, val_size: int = 10_000, seed: int = 0,
            allow_partial: bool = False, force: bool = False, betons: bool | None = None,
            step: Callable[[str], None] = lambda what: None) -> ConvertSummary:
    """Convert `source` into `out`. `betons=None` writes FFCV files when FFCV is importable."""
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"--out {out} is not empty; pass --force to replace what it holds")
    notes: list[str] = []
    want_betons = ffcv_available() if betons is None else betons
    if betons is None and not want_betons:
        notes.append(FFCV_HINT)
    if betons and not ffcv_available():
        raise DataError(FFCV_HINT.replace("so no .beton files were written", "so --beton cannot be honoured"))

    raw = read_cifar10(Path(source), allow_partial=allow_partial, step=lambda name: step(f"reading {name}"))
    train_idx, val_idx = carve_val(raw.train.labels, val_size, seed)
    parts = {"train": (raw.train, train_idx), "val": (raw.train, val_idx),
             "test": (raw.test, np.arange(len(raw.test.labels)))}
    step("computing train statistics")
    # stats from the train split only: never val, never test
    stats = compute_stats(raw.train.images[train_idx])
    source_info = {"kind": raw.source.kind, "sha256": raw.source.sha256, "md5": raw.source.md5,
                   "md5_official": raw.source.md5_official}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        summaries, manifest = _write_all(tmp, raw, parts, stats, source_info, val_size, seed, want_betons, step)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ConvertSummary(out=out, classes=raw.classes, splits=summaries, stats=stats, source=source_info,
                          betons=want_betons, seconds=time.perf_counter() - t0, notes=notes)


def _write_all(tmp: Path, raw: RawCifar, parts: dict, stats: ChannelStats, source_info: dict,
               val_size: int, seed: int, want_betons: bool, step: Callable[[str], None]):
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    summaries, files = [], {}
    for name, (src, idx) in parts.items():
        step(f"writing {name}")
        if len(idx) == 0:
            continue  # --val-size 0: no val file at all
        images = np.ascontiguousarray(src.images[idx])
        labels = src.labels[idx]
        counts = tuple(int(c) for c in np.bincount(labels, minlength=NUM_CLASSES))
        meta = SplitMeta(split=name, classes=tuple(raw.classes), num_images=len(idx), class_counts=counts,
                         stats=stats, content_sha256=content_digest(images, labels), split_seed=seed,
                         val_size=val_size, source=source_info, format_version=FORMAT_VERSION,
                         created_utc=created)
        path = split_path(tmp, name)
        write_split(path, images, labels, idx, meta)
        files[path.name] = {"split": name, "num_images": len(idx), "content_sha256": meta.content_sha256}
        summaries.append(SplitSummary(name, len(idx), counts, path.name))
        if want_betons:
            step(f"writing {name}.beton")
            bpath = beton_path(tmp, name)
            write_beton(bpath, images, labels)
            files[bpath.name] = {"split": name, "num_images": len(idx), "sha256": file_hexdigests(bpath, "sha256")[0]}
    if want_betons and len(parts["val"][1]) == 0:
        step("writing val.beton")  # keep the step count whatever val_size is
    manifest = {"format": "alexpipe-cifar10", "format_version": FORMAT_VERSION, "created_utc": created,
                "source": source_info, "split_seed": seed, "val_size": val_size, "files": files}
    return summaries, manifest


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`, replacing an old one only after success."""
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    os.chmod(tmp, 0o755)  # mkdtemp made it private
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
