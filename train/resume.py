"""Continuing a run from its last.pt: what may change, what may not, and what --force changes from where.

Resume is exact when nothing changed: weights, optimiser (in this run's
layout and device), schedule, scaler, every RNG. With --force, changed
settings take effect from the resumed epoch on, and the run's config records
where (train/folder.py): the optimiser's hyper-parameters are the recipe's,
and a changed schedule continues from the resumed step as if it had been this
recipe's from the start (the cuts a plateau schedule made carry over).
"""

from __future__ import annotations

from typing import Any

import torch

from alexpipe.terminal import console, literal

from . import checkpoint
from .errors import TrainingError
from .folder import recorded_options
from .parts import Data, Progress, Setup
from .recipes import Recipe
from .step import TrainStep

err = console(stderr=True)


def resume(setup: Setup, data: Data, model: torch.nn.Module, step: TrainStep) -> Progress:
    """Load last.pt into `model` and `step`; the run's progress so far."""
    ckpt = checkpoint.load(setup.out / "last.pt", require=checkpoint.RESUME)
    changes = _check_resumable(ckpt, setup, data.identity, step.kind)
    r = setup.recipe
    model.load_state_dict(ckpt["model"])
    checkpoint.restore_optimizer(step.optimizer, ckpt["optimizer"])
    for group in step.optimizer.param_groups:  # the recipe's, whatever the checkpoint's groups said
        group.update(momentum=r.momentum, nesterov=r.nesterov, weight_decay=r.weight_decay)
    saved = Recipe.from_dict(ckpt["recipe"])
    if _shaping(saved, r) & set(changes):
        step.schedule.continue_from(ckpt["schedule"], saved, ckpt["epoch"], ckpt["optimizer"]["param_groups"][0]["lr"])
    else:
        step.schedule.load_state_dict(ckpt["schedule"])
    if step.scaler.is_enabled() and ckpt.get("scaler"):
        step.scaler.load_state_dict(ckpt["scaler"])
    rngs = ckpt["rng"]
    checkpoint.set_rng_state(rngs[setup.world.rank] if isinstance(rngs, list) else rngs)
    if setup.world.is_main:
        changed = "; changed from here on: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) \
            if changes else ""
        err.print(f"resuming {literal(setup.out)} after epoch {ckpt['epoch']} of {r.epochs}{literal(changed)}")
    return Progress(history=ckpt["history"], best=ckpt["best"], start_epoch=ckpt["epoch"] + 1,
                    resumed={"after_epoch": ckpt["epoch"], "changes": changes, "before": ckpt.get("run") or {}})


def _shaping(saved: Recipe, now: Recipe) -> set[str]:
    """The recipe fields whose change reshapes the learning-rate schedule; epochs and the batch size only for
    one-cycle, whose curve spans the run's steps."""
    fields = {"lr", "schedule", "step_epochs", "gamma", "patience", "warmup_epochs"}
    return fields | ({"epochs", "batch_size"} if "onecycle" in (saved.schedule, now.schedule) else set())


def _check_resumable(ckpt: dict, setup: Setup, identity: dict[str, Any],
                     step_kind: str) -> dict[str, tuple[Any, Any]]:
    """What differs between the checkpoint's run and this one ({name: (before, now)}), after refusing what cannot
    be resumed at all, and, without --force, any change of the maths."""
    world, r = setup.world, setup.recipe
    saved_world = len(ckpt["rng"]) if isinstance(ckpt["rng"], list) else 1
    if saved_world != world.world_size:  # per-rank RNG states and shards would not line up
        raise TrainingError(f"cannot resume: the run used {saved_world} process(es), this is {world.world_size}")
    had_val, has_val = ckpt["data"].get("val") is not None, identity.get("val") is not None
    if had_val != has_val:  # best.pt, the plateau schedule and the records all depend on it
        raise TrainingError(f"cannot resume: the run was trained {'with' if had_val else 'without'} a val split, "
                            f"and {setup.opt.data} has {'none' if had_val else 'one'}; start a new run")
    saved = Recipe.from_dict(ckpt["recipe"])
    changes = {k: (v, getattr(r, k)) for k, v in saved.to_dict().items() if r.to_dict()[k] != v}
    visible = {k: v for k, v in changes.items() if k != "epochs" or k in _shaping(saved, r)}  # else: just go on
    before, now = ckpt.get("run") or {}, recorded_options(setup, step_kind)
    settings = {k: (before[k], now[k]) for k in ("amp", "eval_subset") if k in before and before[k] != now[k]}
    changes.update(settings)
    problems = [f"{what} from the run's: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
                for what, diff in (("the recipe differs", visible), ("its settings differ", settings)) if diff]
    if "epochs" in visible:
        problems.append(f"the one-cycle schedule anneals the lr to 0 at its last epoch, so --force rebuilds it "
                        f"for {r.epochs} epochs from epoch {ckpt['epoch'] + 1}")
    for key in ("train", "val", "subset"):
        if ckpt["data"].get(key) != identity.get(key):
            problems.append(f"the {key} data differs from the one the run was trained on")
            changes[f"{key} data"] = ("before", "another")
    if ckpt["epoch"] >= r.epochs:
        problems.append(f"the run already finished its {ckpt['epoch']} epochs (raise --epochs to continue)")
    if problems and not setup.opt.force:
        raise TrainingError("cannot resume: " + "; ".join(problems) + " (pass --force to resume anyway, with "
                            "the new settings from the resumed epoch on)")
    return changes


__all__ = ["resume"]
