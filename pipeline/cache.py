"""alexpipe's per-user cache (downloaded archives, the built DALI plugin)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$ALEXPIPE_CACHE_DIR, else $XDG_CACHE_HOME/alexpipe, else ~/.cache/alexpipe."""
    if os.environ.get("ALEXPIPE_CACHE_DIR"):
        return Path(os.environ["ALEXPIPE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexpipe"
