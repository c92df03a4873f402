"""CIFAR-10 source -> converted folder (train / val / test), all or nothing.

Everything is written into a hidden temporary folder beside `out` and swapped
into place at the very end, so an error, Ctrl-C or kill at any point leaves
`out` exactly as it was. Around that:

- `out` is refused when it is, holds, or lies inside the source, when it is the
  current folder, and when it holds anything but an earlier conversion:
  `--force` replaces a conversion, never a user's files;
- an exclusive lock beside `out` (`.<name>.lock`) makes a second conversion
  into the same place refuse at once instead of racing the first;
- a temporary folder is named `.<name>.tmp-<pid>-<random>`; one whose process
  is gone (a conversion that was killed) is removed by the next conversion
  into the same `out`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import json
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from alexpipe.atomic import WriteError, fsync_dir, os_error_in, reason
from alexpipe.lock import LockHeld, exclusive
from alexpipe.paths import GROWS, too_long

from ..format.beton import FFCV_HINT, beton_path, ffcv_present, write_beton
from ..errors import DataError
from ..format.split import FORMAT_NAME, FORMAT_VERSION, SplitMeta, content_digest, split_path, write_split
from ..hashing import file_hexdigests
from ..constants import MANIFEST, NUM_CLASSES
from ..format.safeio import ordinary_mode, read_limited
from ..sampling import ShortClass, balanced_choice, seed_problem
from ..source.archives import RawCifar, read_cifar10
from ..format.stats import ChannelStats, compute_stats

TMP_MARKER = ".alexpipe-tmp"  # inside a temporary folder while it is being written
# What the longest name made beside --out adds to its name: the temporary folder `.<name>.tmp-<pid>-<8 random>`
# (a Linux pid has at most 7 digits); the lock `.<name>.lock` adds less.
NAME_ROOM = len(".") + len(".tmp-") + 7 + len("-") + 8


def default_sources() -> list[Path]:
    """Where `convert` looks when no --source is given, in order."""
    places = []
    if os.environ.get("ALEXPIPE_CIFAR10"):
        places.append(Path(os.environ["ALEXPIPE_CIFAR10"]))
    from ..cache import cache_dir

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
    try:
        val = balanced_choice(labels, per_class, np.random.default_rng(seed), num_classes, leave=1)
    except ShortClass as short:
        raise DataError(f"--val-size {val_size} needs {per_class} images of class {short.label} "
                        f"but the train set has only {short.available} (some must remain for training)") from None
    mask = np.ones(len(labels), bool)
    mask[val] = False
    return np.flatnonzero(mask), val


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
    if seed_problem(seed):
        raise DataError(seed_problem(seed))
    for flag, path, beside in (("--source", Path(source).expanduser(), 0), ("--out", out, NAME_ROOM)):
        why = too_long(path, beside=beside, grows=GROWS)
        if why:
            raise DataError(f"{flag} {path}: {why}")
    target = _resolve_out(out)
    _refuse_overlap(Path(source).expanduser(), target, out)
    notes: list[str] = []
    want_betons = ffcv_present() if betons is None else betons
    if betons is None and not want_betons:
        notes.append(FFCV_HINT)
    if betons and not ffcv_present():
        raise DataError(FFCV_HINT.replace("so no .beton files were written", "so --beton cannot be honoured"))

    with _exclusive(target, out):
        _remove_stale_temps(target)
        _check_out(target, out, force)
        raw = read_cifar10(Path(source), allow_partial=allow_partial, step=lambda name: step(f"reading {name}"))
        train_idx, val_idx = carve_val(raw.train.labels, val_size, seed)
        parts = {"train": (raw.train, train_idx), "val": (raw.train, val_idx),
                 "test": (raw.test, np.arange(len(raw.test.labels)))}
        step("computing train statistics")
        # stats from the train split only: never val, never test
        stats = compute_stats(raw.train.images[train_idx])
        source_info = {"kind": raw.source.kind, "sha256": raw.source.sha256, "md5": raw.source.md5,
                       "md5_official": raw.source.md5_official}
        tmp = None
        try:
            tmp = _make_temp(target)
            summaries, manifest = _write_all(tmp, raw, parts, stats, source_info, val_size, seed, want_betons, step)
            _write_file(tmp / MANIFEST, lambda path: path.write_text(json.dumps(manifest, indent=2) + "\n"))
            _swap_into_place(tmp, target)
        except OSError as exc:
            raise DataError(_write_failure(exc, tmp, target, out)) from None
        finally:
            if tmp is not None:
                with _no_interrupts():
                    shutil.rmtree(tmp, ignore_errors=True)
    return ConvertSummary(out=out, classes=raw.classes, splits=summaries, stats=stats, source=source_info,
                          betons=want_betons, seconds=time.perf_counter() - t0, notes=notes)


def _write_file(path: Path, write: Callable[[Path], None]) -> None:
    """`write(path)`, with a failure of the disk (however the writing library wraps it) as a WriteError naming
    `path`: safetensors turns a full disk into its own SafetensorError."""
    try:
        write(path)
    except Exception as exc:  # noqa: BLE001 - only the disk's failures are translated
        cause = os_error_in(exc)
        if cause is None:
            raise
        raise WriteError(path, cause) from None


def _write_failure(exc: OSError, tmp: Path | None, target: Path, out: Path) -> str:
    """One line for a failed write: the file as the user will know it (its place in --out, not in the
    temporary folder) and the reason in plain words."""
    where = Path(exc.filename) if exc.filename else (tmp if tmp is not None else target.parent)
    if tmp is not None and where.parent == tmp:
        where = out / where.name
    return f"cannot write {where}: {reason(exc)}; --out was left as it was"


def _resolve_out(out: Path) -> Path:
    """The real folder `out` names (symbolic links resolved), refusing places that cannot be replaced."""
    target = Path(os.path.abspath(out)).resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise DataError(f"--out {out} is the current folder{' (or holds it)' if target != cwd else ''}; "
                        "convert into a folder of its own, e.g. --out data/cifar10")
    if target.exists() and not target.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    return target


def _refuse_overlap(source: Path, target: Path, out: Path) -> None:
    """--out must not be, hold, or lie inside the source: replacing it would destroy the source."""
    src = Path(os.path.abspath(source)).resolve()
    if src == target or target in src.parents:
        raise DataError(f"--out {out} holds the source {source}; converting into it would replace the source "
                        "— choose another --out")
    if src in target.parents:
        raise DataError(f"--out {out} lies inside the source folder {source}; choose a folder outside it")


def _check_out(target: Path, out: Path, force: bool) -> None:
    """`out` may be absent, empty, or (with --force) an earlier conversion and nothing else."""
    if not target.is_dir():
        return
    try:
        present = sorted(p.name for p in target.iterdir())
    except OSError as exc:
        raise DataError(f"--out {out}: cannot list it ({exc.strerror or exc})") from None
    if not present:
        return
    listed = _conversion_files(target)
    if listed is None:
        raise DataError(f"--out {out} is not empty and is not a conversion (no alexpipe {MANIFEST}); "
                        "convert only replaces an earlier conversion, even with --force — choose another --out")
    foreign = [name for name in present if name not in listed]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DataError(f"--out {out} holds files `alexpipe convert` did not write ({shown}); "
                        "move them, or choose another --out")
    if not force:
        raise DataError(f"--out {out} already holds a conversion; pass --force to replace it")


def _conversion_files(folder: Path) -> set[str] | None:
    """The names a conversion in `folder` consists of (its manifest and what it lists), or None if it is not one.

    Deliberately lenient about everything but the format name: a damaged
    conversion is still one, and --force may replace it.
    """
    try:
        manifest = json.loads(read_limited(folder / MANIFEST, 1 << 20, inside=folder))
    except (DataError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return None
    files = manifest.get("files")
    names = {MANIFEST}
    if isinstance(files, dict):
        names |= {n for n in files if isinstance(n, str) and "/" not in n}
    return names


@contextlib.contextmanager
def _exclusive(target: Path, out: Path) -> Iterator[None]:
    """Hold an exclusive lock on `.<name>.lock` beside `out` for the whole conversion (alexpipe/lock.py): the
    folder itself appears only at the end, by a rename."""
    lock = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {exc.filename or target.parent} ({exc.strerror or exc})") from None
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive(lock))
        except LockHeld as other:
            raise DataError(f"another conversion (process {other.pid or 'unknown'}) is writing to {out} (it holds "
                            f"{lock}); wait for it to finish") from None
        except OSError as exc:
            raise DataError(f"cannot write in {target.parent} ({exc.strerror or exc}); choose another --out") \
                from None
        yield


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _make_temp(target: Path) -> Path:
    """A fresh temporary folder beside `target`, named after this process and marked as alexpipe's."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{_temp_prefix(target)}{os.getpid()}-"))
    try:
        (tmp / TMP_MARKER).write_text(f"alexpipe convert, pid {os.getpid()}\n")
    except BaseException:  # a full disk: the caller never learns the name, so remove the folder here
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _remove_stale_temps(target: Path) -> None:
    """Remove temporary folders of conversions into `target` whose process is gone.

    Only folders named as `_make_temp` names them, and holding alexpipe's
    marker, an alexpipe manifest, or nothing: never anything else.
    """
    pattern = re.compile(re.escape(_temp_prefix(target)) + r"(\d+)-[A-Za-z0-9_]+")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m or entry.is_symlink() or not entry.is_dir() or _alive(int(m.group(1))):
            continue
        if (entry / TMP_MARKER).is_file() or _conversion_files(entry) is not None or not any(entry.iterdir()):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # someone else's process: alive
    return True


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore Ctrl-C while swapping or cleaning up: a second Ctrl-C must not leave a half-swapped or
    half-removed folder (both take well under a second)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
        _write_file(path, lambda p: write_split(p, images, labels, idx, meta))
        files[path.name] = {"split": name, "num_images": len(idx), "content_sha256": meta.content_sha256}
        summaries.append(SplitSummary(name, len(idx), counts, path.name))
        if want_betons:
            step(f"writing {name}.beton")
            bpath = beton_path(tmp, name)
            _write_file(bpath, lambda p: write_beton(p, images, labels))
            files[bpath.name] = {"split": name, "num_images": len(idx), "sha256": file_hexdigests(bpath, "sha256")[0]}
    if want_betons and len(parts["val"][1]) == 0:
        step("writing val.beton")  # keep the step count whatever val_size is
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "created_utc": created,
                "source": source_info, "split_seed": seed, "val_size": val_size, "classes": list(raw.classes),
                "files": files}
    return summaries, manifest


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Make the finished folder `target`, replacing an old one only after success.

    Files get the modes an ordinary write gives them (the temporary folder and
    safetensors' files are private). Where the kernel can, old and new swap
    in one step (renameat2 RENAME_EXCHANGE), so `target` never vanishes even
    for an instant; the old conversion is then removed under the temporary name.
    """
    (tmp / TMP_MARKER).unlink()
    for p in tmp.iterdir():
        ordinary_mode(p)
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    ordinary_mode(tmp)
    fsync_dir(tmp)
    with _no_interrupts():
        if target.exists() and _exchange(tmp, target):
            (tmp / TMP_MARKER).write_text(f"alexpipe convert, pid {os.getpid()}: the replaced conversion\n")
        else:
            if target.exists():
                old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{_temp_prefix(target)}{os.getpid()}-"))
                os.replace(target, old)  # replaces the empty folder mkdtemp made
                try:
                    os.replace(tmp, target)
                except OSError:
                    os.replace(old, target)
                    raise
                os.replace(old, tmp)  # the old conversion goes where the caller cleans up
            else:
                os.replace(tmp, target)
        fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
