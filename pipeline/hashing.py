"""Streaming file digests (archives are ~170 MB: never read them whole)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def file_hexdigests(path: Path | str, *algorithms: str) -> tuple[str, ...]:
    """Hex digests of the file at `path`, one per algorithm name, in one pass."""
    with open(path, "rb") as f:
        return stream_hexdigests(f, *algorithms)


def stream_hexdigests(f: BinaryIO, *algorithms: str) -> tuple[str, ...]:
    """Hex digests of what is left to read in the open file `f` (one opened safely, say), in one pass."""
    hs = [hashlib.new(a) for a in algorithms]
    while chunk := f.read(1 << 22):
        for h in hs:
            h.update(chunk)
    return tuple(h.hexdigest() for h in hs)
