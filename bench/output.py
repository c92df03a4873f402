"""Where `bench --out` writes: checked before anything is measured, and written with one clear failure.

A benchmark runs for minutes; its results must not then be lost to a folder
that cannot hold them. `check_out` refuses, up front and in one line, an
`--out` that is a file, a dangling link, not writable, has a name longer
than a file system allows, or sits on a file system with almost no space
left. Whatever still goes wrong while writing (the disk fills meanwhile) is
caught in one place, `write_report`: one line naming the file and the
reason, and no temporary file left behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

from alexpipe.terminal import fail

NAME_MAX = 255  # bytes in one path component: Linux's limit on every common file system
PATH_MAX = 4096  # bytes in a whole path
MIN_FREE = 1 << 20  # bytes: the report (JSON, Markdown, PNG) takes a few hundred KiB at most
REPORT_NAMES = ("bench.json", "bench.md", "bench.png")  # in the order report.write_all writes them


def reason(exc: OSError) -> str:
    """An OSError as a user reads it: "no space left on device", "file name too long", ..."""
    return (exc.strerror or str(exc)).lower()


def check_out(out: Path) -> None:
    """--out must be a folder that exists or can be made, writable, with room for the report."""
    full = os.fsencode(os.path.abspath(out))
    longest = max((len(os.fsencode(p)) for p in out.parts), default=0)
    if longest > NAME_MAX or len(full) >= PATH_MAX:
        what = (f"a name of {longest} bytes; at most {NAME_MAX}" if longest > NAME_MAX
                else f"{len(full)} bytes in all; at most {PATH_MAX - 1}")
        fail(f"--out {out}: file name too long ({what})")
    try:
        if out.is_symlink() and not out.exists():
            fail(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist")
        if out.exists() and not out.is_dir():
            fail(f"--out {out} exists and is not a folder")
        place = out.absolute()
        while not place.exists():
            place = place.parent
        if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
            fail(f"--out {out}: {place} is not a folder this user can write to")
        free = shutil.disk_usage(place).free
    except OSError as exc:
        fail(f"--out {out}: {reason(exc)}")
    if free < MIN_FREE:
        fail(f"--out {out}: no space left on device ({free // 1024} KiB free where it would be written; the "
             f"report needs up to {MIN_FREE >> 20} MiB)")


def _stamp(path: Path) -> Optional[int]:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _remove_temporaries(out: Path) -> None:
    """Whatever a failed or interrupted write left beside the report's files (temporary siblings)."""
    for name in REPORT_NAMES:
        try:
            leftovers = list(out.glob(f".{name}.tmp*"))
        except OSError:
            return
        for p in leftovers:
            try:
                p.unlink()
            except OSError:
                pass


def write_report(doc: dict[str, Any], out: Path) -> list[Path]:
    """report.write_all, with an OSError as one line naming the file it could not write, and no temporary
    file left (nor after an interrupt)."""
    from . import report

    before = {name: _stamp(out / name) for name in REPORT_NAMES}
    try:
        return report.write_all(doc, out)
    except BaseException as exc:
        _remove_temporaries(out)
        if not isinstance(exc, OSError):
            raise
        unwritten = [out / n for n in REPORT_NAMES if _stamp(out / n) in (None, before[n])]
        target = exc.filename if exc.filename and Path(exc.filename).name in REPORT_NAMES else (
            unwritten[0] if unwritten else out)
        fail(f"cannot write {target}: {reason(exc)}")
