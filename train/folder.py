"""The run folder: one run at a time in it, nothing of the user's overwritten, and its record of the run.

A run holds the folder's lock for its whole life (alexpipe/lock.py), so a
second run, a --resume or a --force into it is refused while it lives; the
folder must be new, empty, or an alexpipe run; config.json records how the
run first started and every resume after.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from alexpipe.lock import LockHeld, exclusive
from alexpipe.provenance import git_commit

from . import distributed
from .bookkeeping import RUN_FILES
from .errors import TrainingError
from .metrics import write_json
from .parts import Setup

RUN_LOCK = ".alexpipe.lock"  # held by the live run in its folder; gone when it ends


@contextlib.contextmanager
def locked_out(out: Path, data: Path, writes: bool) -> Iterator[None]:
    """The run folder `out`, locked by this run for its whole life when it `writes` (rank 0). The folder is
    made for the lock; if the run fails before it records anything, the folders made for it are removed
    again."""
    if not writes:
        yield
        return
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise TrainingError(f"--out {out} is the data folder {data} or inside it: choose another run folder")
    if out.is_symlink() and not out.exists():
        raise TrainingError(f"--out {out} is a symbolic link to {out.readlink()}, which does not exist")
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} exists and is not a folder")
    made = [p for p in (out, *out.parents) if not p.exists()]
    try:
        with contextlib.ExitStack() as held:
            try:
                out.mkdir(parents=True, exist_ok=True)
                held.enter_context(exclusive(out / RUN_LOCK))
            except LockHeld as lock:
                raise TrainingError(f"another alexpipe run (process {lock.pid or 'unknown'}) is using {out}: wait "
                                    "for it to end, or stop it") from None
            except OSError as exc:
                raise TrainingError(f"cannot use the run folder {out}: {exc.strerror or exc}") from None
            yield
    finally:
        if not (out / "config.json").exists():  # nothing recorded: leave no folder behind
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def prepare_out(out: Path, resume: bool, force: bool) -> None:
    """The run folder must be new, empty, or an alexpipe run (then --resume or --force; a run that never
    finished an epoch is simply started again): nothing else of the user's is ever overwritten."""
    entries = [p for p in out.iterdir() if p.name != RUN_LOCK] if out.is_dir() else []
    if resume or not entries:
        return
    if not _holds_run(out):
        raise TrainingError(f"--out {out} holds files that are not an alexpipe run: train writes only into a new "
                            "or empty folder, or one of its own runs (which --force replaces)")
    if not (out / "last.pt").exists():
        return  # its first epoch never finished: starting again loses nothing
    if not force:
        raise TrainingError(f"{out} already holds a run; pass --resume to continue it, or --force to start over")


def _holds_run(out: Path) -> bool:
    """Whether `out` is an alexpipe run folder: its config.json is the one `record_config` writes."""
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(config, dict) and config.get("type") == "config" and isinstance(config.get("recipe"), dict)


def recorded_options(setup: Setup, step_kind: str) -> dict[str, Any]:
    """The run's settings that are not recipe fields, as config.json records them."""
    opt = setup.opt
    return {"device": str(setup.device),
            "amp": str(setup.amp_dtype).replace("torch.", "") if setup.amp_dtype else "off",
            "channels_last": setup.channels_last, "compile": opt.compile,
            "compile_mode": opt.compile_mode if opt.compile else None, "step": step_kind,
            "checkpoint_every": opt.checkpoint_every, "world_size": setup.world.world_size, "subset": opt.subset,
            "eval_subset": opt.eval_subset}


def record_config(setup: Setup, identity: dict[str, Any], step_kind: str,
                  resumed: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Clear an old run's files (with --force, or a run that never finished an epoch), and write config.json:
    the resolved recipe, the options, the data's identity, where the code came from, and the run's history —
    its first command, then each resume with its time, commit and changes. Returns the record."""
    opt, out = setup.opt, setup.out
    now = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": opt.command, "git_commit": git_commit()}
    first = resumed["before"] if resumed else {}
    resumes = list(first.get("resumes") or [])
    if resumed:
        resumes.append({**now, "after_epoch": resumed["after_epoch"],
                        "changes": {k: list(v) if isinstance(v, tuple) else v for k, v in resumed["changes"].items()}})
    config = {
        "type": "config", "recipe": setup.recipe.to_dict(), **now, **recorded_options(setup, step_kind),
        "data": str(Path(opt.data).resolve()), "data_sha256": {s: identity[s] for s in ("train", "val", "test")},
        "torch": str(torch.__version__), "python": sys.version.split()[0], "resumes": resumes}
    for key in ("time", "command", "git_commit"):  # the run's own: how it first started
        config[key] = first.get(key, config[key])
    if not setup.world.is_main:
        return config
    try:
        if not opt.resume:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        write_json(out / "config.json", config)
    except OSError as exc:
        raise TrainingError(f"cannot write the run folder {out}: {exc.strerror or exc}") from None
    return config


def resume_hint(out: Path, world: distributed.World) -> str:
    """The command that continues the run in `out`, ready to paste into a shell (under torchrun, torchrun's)."""
    args = ["-m", "alexpipe", "train", "--out", str(out), "--resume"]
    if world.distributed:
        return shlex.join(["torchrun", "--nproc-per-node", str(world.world_size), *args])
    return shlex.join(["alexpipe", *args[2:]])


__all__ = ["RUN_FILES", "RUN_LOCK", "locked_out", "prepare_out", "record_config", "recorded_options",
           "resume_hint"]
