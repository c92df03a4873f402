"""Which backends can run here, on this folder: found before anything is measured.

Two stages, both before the first warm-up. Here, in the command's own
process and in milliseconds: what each backend needs that can be seen without
running it (its library installed, its files in the converted folder: FFCV
reads `.beton` files that a folder converted with `--no-beton` lacks). Then
in the harness, every worker builds its configuration at once (opening and
checking its data), so what only a real build finds (a stale `.beton`, a
DALI that cannot load) is known in seconds too.

What happens to a backend that cannot run depends on who asked for it: one
the user named (or the torchvision baseline, or the model-only ceiling, which
every comparison needs) stops the command with one line; one that is merely
in the default list is skipped with a one-line note.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package ("nvidia"), or a broken one
        return False


def cannot_run(backend: str, data: Path) -> Optional[str]:
    """Why `backend` cannot run on `data`'s train split, as far as can be seen without running it (None: it
    may)."""
    if backend == "dali" and not _installed("nvidia.dali"):
        return "NVIDIA DALI is not installed (pip install 'alexpipe[dali]')"
    if backend == "ffcv":
        from alexpipe.pipeline.format.beton import FFCV_INSTALL, beton_path, ffcv_present

        if not ffcv_present():
            return f"FFCV is not installed ({FFCV_INSTALL})"
        beton = beton_path(data, "train")
        if not beton.is_file():
            return (f"{beton}: no such file; the ffcv backend reads the .beton files that `alexpipe convert` "
                    f"writes when FFCV is installed (this folder was converted without them, e.g. with --no-beton)")
    return None


class Refused(Exception):
    """A configuration the user needs cannot run: the command stops with this one line."""


def judge(backend: str, reason: str, required: dict[str, str], skipped: dict[str, str]) -> None:
    """A configuration of `backend` cannot run: Refused when it is required (`required`: backend -> how to
    name it in the message), else noted once in `skipped` (backend -> reason). The model-only ceiling has no
    backend ("") and is always required."""
    if backend in required or not backend:
        raise Refused(f"{required.get(backend, 'the model-only ceiling')}: {reason}")
    skipped.setdefault(backend, reason)
