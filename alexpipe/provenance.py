"""Where a result came from: the source tree's git commit, recorded by runs and benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """HEAD of the checkout alexpipe runs from, "+dirty" with uncommitted changes to tracked files, else "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if rev.returncode:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
