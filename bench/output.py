"""Where `bench --out` writes: checked before anything is measured, and written with one clear failure.

A benchmark runs for minutes; its results must not then be lost to a folder
that cannot hold them. `check_out` refuses, up front and in one line, an
`--out` that is a file, a dangling link, not writable, has a name longer
than a file system allows, or sits on a file system with almost no space
left. Whatever still goes wrong while writing (the disk fills meanwhile) is
one line naming the file and the reason (`alexpipe.atomic`, which also leaves
no temporary file behind).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from alexpipe.atomic import WriteError, reason
from alexpipe.paths import GROWS, check_fits
from alexpipe.terminal import fail

MIN_FREE = 1 << 20  # bytes: the report (JSON, Markdown, PNG) takes a few hundred KiB at most


def check_out(out: Path) -> None:
    """--out must be a folder that exists or can be made, writable, with room for the report."""
    check_fits("--out", out, grows=GROWS)
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


def write_report(doc: dict[str, Any], out: Path) -> list[Path]:
    """report.write_all, with a failed write as one line naming the file."""
    from . import report

    try:
        return report.write_all(doc, out)
    except WriteError as exc:
        fail(str(exc))
