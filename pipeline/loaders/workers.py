"""How many worker processes or threads a loader may start on this machine.

`--workers 1000` with the torchvision loader forks a thousand copies of the
process: the machine runs out of memory, the run is killed and its workers
are orphaned. More workers than the cores this process may run on cannot
make loading faster, so a count above that is capped (and the user told in
one line); a negative count is refused. Light to import (os only): every
command that takes `--workers` calls `check_workers`.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["check_workers", "usable_cores"]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or taskset's limit, not the
    machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def check_workers(n: int, flag: str = "--workers") -> tuple[int, Optional[str]]:
    """(the worker count to use, a one-line note when `n` was capped to the usable cores, else None).

    ValueError, naming `flag`, for a negative count.
    """
    if n < 0:
        raise ValueError(f"{flag} must not be negative, got {n}")
    cores = usable_cores()
    if n > cores:
        return cores, f"{flag} {n} is more than the {cores} CPU core(s) this process may use: using {cores}"
    return n, None
