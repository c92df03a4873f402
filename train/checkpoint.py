"""Checkpoints that resume exactly and load without running code.

Everything is stored as tensors and plain Python values (RNG states included),
so `torch.load(weights_only=True)` can read it: a checkpoint from elsewhere
cannot execute anything. Writes go through `alexpipe.atomic` (a temporary
file renamed into place), so an interruption or a full disk leaves the
previous checkpoint intact and no temporary file behind.
"""

from __future__ import annotations

import hashlib
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexpipe.atomic import write_atomic

FORMAT = "alexpipe-checkpoint"
VERSION = 2  # 2: a sha256 of the whole content, checked on load (version 1 had none, and still loads)


def rng_state() -> dict[str, Any]:
    """Every random generator the loop touches (dropout, any numpy/python use)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# How an optimiser runs, as opposed to what it computes: these stay the current run's own on resume.
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved optimiser state into this run's optimiser, on this run's device and memory layout.

    `load_state_dict` keeps each saved buffer's strides: a momentum buffer saved
    contiguous meets a channels_last parameter (or the reverse) when the memory
    format or the device changed between runs. CUDA's fused SGD refuses that,
    and the CPU's walks both as flat arrays and silently mixes up elements. So
    every per-parameter buffer is copied into its parameter's layout and
    device, and the saved param groups do not bring back the saved run's
    implementation (`fused`, `foreach`, ...).
    """
    own = [{k: g[k] for k in _IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, mine in zip(optimizer.param_groups, own):
        for k in _IMPLEMENTATION_KEYS:
            group.pop(k, None)
        group.update(mine)
    for p, buffers in optimizer.state.items():
        for name, value in buffers.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.dim() > 0:
                buffers[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def plain_numbers(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with the learning rates as Python floats: a captured step keeps them in device tensors (the
    optimiser's param groups, the scheduler's last values), but a checkpoint records numbers, so that it
    resumes the same on any device, captured or not."""
    def plain(v: Any) -> Any:
        if torch.is_tensor(v) and v.dim() == 0 and v.is_floating_point():
            return float(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    out = dict(state)
    if isinstance(state.get("optimizer"), dict):
        out["optimizer"] = {**state["optimizer"], "param_groups": plain(state["optimizer"]["param_groups"])}
    if isinstance(state.get("schedule"), dict):
        out["schedule"] = plain(state["schedule"])
    return out


def _python_state_to_plain(s: tuple) -> list:
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _python_state_from_plain(s: list) -> tuple:
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary sibling, fsync, rename over `path`.

    Thread-safe (every call has its own temporary name); a failure of the disk
    is `alexpipe.atomic.WriteError`, one line naming `path`.
    """
    content = {"format": FORMAT, "version": VERSION, **obj}
    content["sha256"] = digest(content)
    write_atomic(path, lambda f: torch.save(content, f))


def digest(obj: Any) -> str:
    """sha256 of a checkpoint's content: every tensor's bytes, dtype and shape, and every plain value, with the
    names that lead to them, in order. A flipped bit anywhere (an exponent that turns a weight into 1e31)
    changes it; `load` recomputes it."""
    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if torch.is_tensor(value):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(value.shape)}:".encode())
            if t.numel():
                h.update(memoryview(t.view(torch.uint8).numpy()))
        elif isinstance(value, dict):
            h.update(f"D{len(value)}:".encode())
            for k, v in value.items():
                h.update(f"{k!r}=".encode())
                walk(v)
        elif isinstance(value, (list, tuple)):
            h.update(f"L{len(value)}:".encode())
            for v in value:
                walk(v)
        else:
            h.update(f"V{value!r};".encode())

    walk({k: v for k, v in obj.items() if k != "sha256"})
    return h.hexdigest()


# What each use of a checkpoint reads, and the type each part must have: a checkpoint may have been edited by
# hand, and a part that is missing or of another type must be one line, not a KeyError deep in a resume.
EVALUATE = {"epoch": int, "model": dict, "recipe": dict, "classes": list}
RESUME = {**EVALUATE, "optimizer": dict, "schedule": dict, "rng": (dict, list), "data": dict, "history": list,
          "best": dict}
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def load(path: Path, map_location: str | torch.device = "cpu",
         require: dict[str, type | tuple[type, ...]] = EVALUATE) -> dict[str, Any]:
    """Load a checkpoint written by `save_atomic`; ValueError with one sentence otherwise.

    `require` names the parts the caller will read and their types (EVALUATE,
    RESUME): a checkpoint without one of them, or with it of another type, is
    refused here, naming the part.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    with open(path, "rb") as f:
        if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise ValueError(f"{path}: not an alexpipe checkpoint (not a file torch.save writes)")
    try:
        with warnings.catch_warnings():  # torch's warnings about the file's pickle protocol: not the user's concern
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, refused globals: all one line
        raise ValueError(f"{path}: not a readable alexpipe checkpoint ({_why_unreadable(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an alexpipe checkpoint")
    if ckpt.get("version") not in (1, VERSION):
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')} is not {VERSION}")
    if ckpt["version"] >= 2 and ckpt.get("sha256") != digest(ckpt):
        raise ValueError(f"{path}: damaged: its content does not match the digest it was saved with (a changed "
                         "or corrupted file); use an earlier checkpoint")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a complete alexpipe checkpoint (no {', '.join(missing)})")
    for key, kind in require.items():
        if not isinstance(ckpt[key], kind) or (kind is int and isinstance(ckpt[key], bool)):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ValueError(f"{path}: not a usable alexpipe checkpoint (its {key} is "
                             f"{_short(repr(ckpt[key]))}, not {'an' if names[0] in 'aeiou' else 'a'} {names})")
    return ckpt


def _why_unreadable(exc: Exception) -> str:
    """torch's reason in one whole sentence, without its advice.

    When torch's safe loader refuses an object, its message goes on to suggest
    loading the file with `weights_only=False`, that is, running whatever code
    the file holds: a user must never be told that about a file from elsewhere.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's message carries terminal bold
    refused = re.search(r"WeightsUnpickler error:\s*(.*)", text, re.S)
    if refused:
        return ("it holds objects other than tensors and plain values, which are never loaded: "
                f"{_first_sentence(refused.group(1))}")
    return f"{type(exc).__name__}: {_first_sentence(text)}"


def _first_sentence(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return _short(re.split(r"(?<=[a-z0-9)])\. ", line, maxsplit=1)[0].rstrip("."))


def _short(text: str, limit: int = 200) -> str:
    """`text`, cut at a word boundary with an ellipsis if it is longer than `limit`: never mid-word."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"
