"""A training run, top to bottom: start, the run folder, the data, the model, resume, the epochs, the test.

`fit` is the whole story; each function after it is one step, and they share
one `Run`. docs/design.md says where each step's responsibility ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from alexpipe.model import build_model
from alexpipe.pipeline import load_split, make_loader, verify_dataset
from alexpipe.pipeline.integrity import read_manifest
from alexpipe.pipeline.sampling import ShortClass, balanced_choice
from alexpipe.provenance import git_commit
from alexpipe.terminal import console, literal, note

from . import checkpoint, distributed
from .errors import RunInterrupted, TrainingError
from .hardware import COMPILE_MODES, amp_note, resolve_amp, resolve_device
from .inputs import feed
from .interrupt import GracefulInterrupt, Interrupted
from .loop import EpochContext, evaluate, train_epoch
from .metrics import write_json, write_jsonl
from .plot import plot_curves
from .progress import EpochProgress
from .recipes import Recipe, validate
from .schedule import Schedule, build_optimizer
from .step import TrainStep, build_step, compiled

err = console(stderr=True)


@dataclass
class RunOptions:
    """How to run a recipe: where, on what, and with which speed knobs (none change the maths)."""

    data: Path
    out: Path
    recipe: Recipe = field(default_factory=Recipe)
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: Optional[bool] = None  # default: on for CUDA, off on CPU (measured: see README)
    compile: bool = False  # torch.compile the step (model, loss, clipping) and the resident augmentation
    compile_mode: Optional[str] = None  # torch.compile's mode: default | reduce-overhead | max-autotune ...
    subset: Optional[int] = None  # class-balanced subset of the train split
    eval_subset: Optional[int] = None  # class-balanced subset of val and test (quick runs)
    num_workers: int = 2
    resume: bool = False
    force: bool = False
    log_every: int = 20
    command: str = ""
    dist_timeout: float = 600.0  # seconds before a stuck collective fails the job


@dataclass
class Run:
    """What the steps of one run share; each step fills in its part."""

    opt: RunOptions
    recipe: Recipe
    world: distributed.World
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    classes: tuple[str, ...] = ()
    loaders: dict[str, Any] = field(default_factory=dict)  # train, val, test
    identity: dict[str, Any] = field(default_factory=dict)  # what the checkpoint records of the data
    model: Optional[torch.nn.Module] = None  # the bare network: its state is what checkpoints hold
    net: Optional[torch.nn.Module] = None  # what is trained: fed as the recipe says, DDP-wrapped
    eval_net: Optional[torch.nn.Module] = None  # net, compiled for evaluation with --compile
    step: Optional[TrainStep] = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    start_epoch: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    wall0: float = 0.0  # perf_counter() at which the run's wall clock (continued across resumes) started

    @property
    def out(self) -> Path:
        return Path(self.opt.out)


def fit(opt: RunOptions) -> dict[str, Any]:
    """Train `opt.recipe` on `opt.data` into `opt.out`; returns the final summary."""
    run = start(opt)
    try:
        prepare_out(run)
        load_data(run)
        build(run)
        if opt.resume:
            resume(run)
        record_config(run)
        train(run)
        return finish(run)
    finally:
        distributed.shutdown(run.world)


def start(opt: RunOptions) -> Run:
    """Check the recipe and options, find the device, join the process group under torchrun."""
    try:
        validate(opt.recipe)
        if opt.compile_mode not in (None, *COMPILE_MODES):
            raise ValueError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {opt.compile_mode!r}")
        world = distributed.world_from_env()
        device = resolve_device(opt.device, world.local_rank)
        amp_dtype = resolve_amp(opt.amp, device)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    if world.is_main and amp_note(amp_dtype, device):
        note(amp_note(amp_dtype, device))
    if opt.recipe.batch_size % world.world_size:
        raise TrainingError(f"--batch-size {opt.recipe.batch_size} does not divide among {world.world_size} "
                            "processes (the global batch is split evenly)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # training batches have one static shape (drop_last)
    distributed.init(world, device, opt.dist_timeout)
    channels_last = device.type == "cuda" if opt.channels_last is None else opt.channels_last
    return Run(opt, opt.recipe, world, device, amp_dtype=amp_dtype, channels_last=channels_last)


def prepare_out(run: Run) -> None:
    """The run folder must be new, empty, or an alexpipe run (then --resume or --force): nothing else of the
    user's is ever overwritten. It is made only once everything else has been checked (`record_config`)."""
    out, data = run.out, Path(run.opt.data)
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise TrainingError(f"--out {out} is the data folder {data} or inside it: choose another run folder")
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} exists and is not a folder")
    if run.opt.resume or not out.is_dir() or not any(out.iterdir()):
        return
    if not _holds_run(out):
        raise TrainingError(f"--out {out} holds files that are not an alexpipe run: train writes only into a new "
                            "or empty folder, or one of its own runs (which --force replaces)")
    if not run.opt.force:
        raise TrainingError(f"{out} already holds a run; pass --resume to continue it, or --force to start over")


RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt", "summary.json")


def _holds_run(out: Path) -> bool:
    """Whether `out` is an alexpipe run folder: its config.json is the one `record_config` writes."""
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(config, dict) and config.get("type") == "config" and isinstance(config.get("recipe"), dict)


def load_data(run: Run) -> None:
    """Verify the data (manifest, headers, content digests), then make the loaders (a subset of each where
    asked), each rank its shard. Everything the run will need is checked here, before the first step."""
    opt, r, world = run.opt, run.recipe, run.world
    data = Path(opt.data)
    splits = ["train", "val", "test"] if "val.safetensors" in read_manifest(data)["files"] else ["train", "test"]
    digests = verify_dataset(data, splits)  # the digests of the bytes read, not the ones recorded
    if "val" not in splits:
        if r.schedule == "plateau":
            raise TrainingError(f"{data} has no val split (converted with --val-size 0), and the plateau schedule "
                                "cuts the lr on the val loss: choose --schedule step or onecycle")
        if world.is_main:
            err.print(f"note: {literal(data)} has no val split (converted with --val-size 0): no per-epoch "
                      "validation; best.pt is the last epoch")
    train_split = load_split(data, "train")
    run.classes = train_split.meta.classes
    subset = (_subset(train_split.labels.numpy(), opt.subset, r.seed, len(run.classes), "--subset")
              if opt.subset else None)
    common = dict(device=run.device, dtype=run.amp_dtype or torch.float32, channels_last=run.channels_last,
                  seed=r.seed, rank=world.rank, world_size=world.world_size, num_workers=opt.num_workers)
    if r.loader == "resident" and opt.compile:  # the augmentation is part of the hot path: compile it too
        common.update(compile=True, compile_mode=opt.compile_mode)
    eval_batch = max(256, r.batch_size // world.world_size)
    run.loaders["train"] = make_loader(data, "train", r.loader, batch_size=r.batch_size // world.world_size,
                                       pca=r.pca, pca_sigma=r.pca_sigma, indices=subset, **common)
    run.loaders["val"] = None
    for name in splits[1:]:
        labels = load_split(data, name).labels.numpy()
        indices = (_subset(labels, opt.eval_subset, r.seed, len(run.classes), "--eval-subset")
                   if opt.eval_subset else None)
        run.loaders[name] = make_loader(data, name, r.loader, batch_size=eval_batch, indices=indices, **common)
    run.identity = {"train": digests["train"], "val": digests.get("val"),
                    "subset": None if subset is None else [int(i) for i in subset]}


def _subset(labels: np.ndarray, n: int, seed: int, num_classes: int, flag: str = "--subset") -> np.ndarray:
    """`n` positions, n / num_classes per class, chosen by `seed`, ascending."""
    if n <= 0 or n % num_classes:
        raise TrainingError(f"{flag} must be a positive multiple of {num_classes}, got {n}")
    try:
        return balanced_choice(labels, n // num_classes, np.random.default_rng([seed, 0x5EB5E7]), num_classes)
    except ShortClass as short:
        raise TrainingError(f"{flag} {n} needs {n // num_classes} images of class {short.label}, only "
                            f"{short.available} exist") from None


def build(run: Run) -> None:
    """The network (seeded), its optimiser and schedule, and the training step that drives them."""
    r, opt = run.recipe, run.opt
    random.seed(r.seed)
    np.random.seed(r.seed)
    torch.manual_seed(r.seed)
    model = build_model(r.model, num_classes=len(run.classes), init=r.init, dropout=r.dropout).to(run.device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, r)
    schedule = Schedule(optimizer, r, steps_per_epoch=len(run.loaders["train"]))
    net = feed(model, r.inputs, run.loaders["train"].split.meta.stats.std)
    if run.world.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.model, run.net = model, net
    run.step = build_step(net, optimizer, schedule, amp_dtype=run.amp_dtype, clip_grad_norm=r.clip_grad_norm,
                          label_smoothing=r.label_smoothing, compile=opt.compile, compile_mode=opt.compile_mode)
    run.eval_net = compiled(net, opt.compile_mode) if opt.compile else net


def resume(run: Run) -> None:
    """Continue from last.pt: weights, optimiser (in this run's layout and device), schedule, scaler, RNGs."""
    ckpt = checkpoint.load(run.out / "last.pt", require=checkpoint.RESUME)
    _check_resumable(ckpt, run)
    step = run.step
    run.model.load_state_dict(ckpt["model"])
    checkpoint.restore_optimizer(step.optimizer, ckpt["optimizer"])
    step.schedule.load_state_dict(ckpt["schedule"])
    if step.scaler.is_enabled() and ckpt.get("scaler"):
        step.scaler.load_state_dict(ckpt["scaler"])
    run.history, run.best, run.start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
    rngs = ckpt["rng"]
    checkpoint.set_rng_state(rngs[run.world.rank] if isinstance(rngs, list) else rngs)
    if run.world.is_main:
        err.print(f"resuming {literal(run.out)} after epoch {ckpt['epoch']} of {run.recipe.epochs}")


def _check_resumable(ckpt: dict, run: Run) -> None:
    saved_world = len(ckpt["rng"]) if isinstance(ckpt["rng"], list) else 1
    if saved_world != run.world.world_size:  # per-rank RNG states and shards would not line up
        raise TrainingError(f"cannot resume: the run used {saved_world} process(es), this is "
                            f"{run.world.world_size}")
    r, problems = run.recipe, []
    saved = Recipe.from_dict(ckpt["recipe"])
    diff = {k: (v, getattr(r, k)) for k, v in saved.to_dict().items() if k != "epochs" and r.to_dict()[k] != v}
    if diff:
        problems.append("the recipe differs from the run's: " +
                        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
    for key in ("train", "val", "subset"):
        if ckpt["data"].get(key) != run.identity.get(key):
            problems.append(f"the {key} data differs from the one the run was trained on")
    if ckpt["epoch"] >= r.epochs:
        problems.append(f"the run already finished its {ckpt['epoch']} epochs (raise --epochs to continue)")
    if problems and not run.opt.force:
        raise TrainingError("cannot resume: " + "; ".join(problems) + " (pass --force to resume anyway)")


def record_config(run: Run) -> None:
    """Make the run folder (now that everything has been checked), clear an old run's files with --force, and
    write config.json: the resolved recipe, the options, the data's identity and where the code came from."""
    opt = run.opt
    run.config = {
        "type": "config", "recipe": run.recipe.to_dict(), "git_commit": git_commit(), "command": opt.command,
        "device": str(run.device), "amp": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "off",
        "channels_last": run.channels_last, "compile": opt.compile,
        "compile_mode": opt.compile_mode if opt.compile else None, "world_size": run.world.world_size,
        "subset": opt.subset, "eval_subset": opt.eval_subset, "data": str(opt.data),
        "data_sha256": {split: run.identity[split] for split in ("train", "val")},
        "torch": str(torch.__version__), "python": sys.version.split()[0]}
    if not run.world.is_main:
        return
    try:
        run.out.mkdir(parents=True, exist_ok=True)
        if opt.force and not opt.resume:
            for name in RUN_FILES:
                (run.out / name).unlink(missing_ok=True)
        write_json(run.out / "config.json", run.config)
    except OSError as exc:
        raise TrainingError(f"cannot write the run folder {run.out}: {exc.strerror or exc}") from None


def train(run: Run) -> None:
    """The epochs: train, validate, step the schedule, checkpoint. A Ctrl-C stops between two steps."""
    r, world = run.recipe, run.world
    run.wall0 = time.perf_counter() - (run.history[-1]["wall_seconds"] if run.history else 0.0)
    epoch = run.start_epoch - 1
    progress = EpochProgress(err) if world.is_main else None
    with GracefulInterrupt() as stop, progress or contextlib.nullcontext():
        ctx = EpochContext(run.step, world, run.device, run.opt.log_every, stop, progress)
        try:
            for epoch in range(run.start_epoch, r.epochs + 1):
                run.loaders["train"].set_epoch(epoch)
                lr = run.step.schedule.lr
                stats = train_epoch(ctx, run.net, run.loaders["train"], epoch)
                val = _validate(run)
                run.step.schedule.after_epoch(val["loss"])
                run.history.append({"type": "epoch", "epoch": epoch, **stats, "val_loss": val["loss"],
                                    "val_acc": val["top1"], "val_top5": val["top5"], "val_images": val["images"],
                                    "lr": lr, "epoch_seconds": stats["train_seconds"],
                                    "wall_seconds": time.perf_counter() - run.wall0})
                _publish_epoch(run, epoch, improved=val["top1"] is None or val["top1"] > run.best["val_acc"])
        except (Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else (stop.requested or signal.SIGINT)
            done = f"{run.out / 'last.pt'} holds the end of epoch {epoch - 1}" if epoch > 1 else "no epoch had finished"
            raise RunInterrupted(f"interrupted ({signal.Signals(signum).name}) during epoch {epoch}; {done}: "
                                 f"continue with `alexpipe train --out {run.out} --resume`", signum) from None


def _validate(run: Run) -> dict[str, Any]:
    """The epoch's validation (all None without a val split)."""
    if run.loaders["val"] is None:
        return {"loss": None, "top1": None, "top5": None, "images": 0}
    return evaluate(run.eval_net, run.loaders["val"], run.amp_dtype, run.recipe.tta_flip, len(run.classes),
                    run.world)


def _publish_epoch(run: Run, epoch: int, improved: bool) -> None:
    """End of an epoch: every rank's RNG state to rank 0, which writes the checkpoints (atomic), the metrics
    file, the curves and one line; then every rank waits for it."""
    if improved:  # without a val split every epoch is the best so far: best.pt is the last epoch
        run.best = {"val_acc": run.history[-1]["val_acc"], "epoch": epoch}
    rngs = _gather(checkpoint.rng_state(), run.world)
    if run.world.is_main:
        step = run.step
        state = {"epoch": epoch, "model": run.model.state_dict(), "optimizer": step.optimizer.state_dict(),
                 "schedule": step.schedule.state_dict(),
                 "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None, "rng": rngs,
                 "recipe": run.recipe.to_dict(), "data": run.identity, "history": run.history, "best": run.best,
                 "classes": list(run.classes), "run": run.config}
        checkpoint.save_atomic(state, run.out / "last.pt")
        if improved:
            checkpoint.save_atomic(state, run.out / "best.pt")
        write_jsonl(run.out / "metrics.jsonl", [run.config, *run.history])
        plot_curves(run.history, run.out / "curves.png", title=f"alexpipe {run.recipe.name} recipe")
        _print_epoch(run.history[-1], run.recipe.epochs)
    distributed.barrier(run.world)


def _print_epoch(rec: dict[str, Any], epochs: int) -> None:
    val = (f"val loss {rec['val_loss']:.4f} acc {100 * rec['val_acc']:5.2f}%" if rec["val_acc"] is not None
           else "no val split")
    err.print(f"epoch {rec['epoch']:3d}/{epochs}  train loss {rec['train_loss']:.4f} acc "
              f"{100 * rec['train_acc']:5.2f}%  {val}  lr {rec['lr']:.2e}  {rec['images_per_s']:6.0f} img/s  "
              f"data wait {100 * rec['data_wait_fraction']:4.1f}%  {rec['epoch_seconds']:5.1f}s")


def _gather(value: Any, world: distributed.World) -> Any:
    """`value` of every rank, as a list on every rank (the value itself for one process)."""
    if not world.distributed:
        return value
    values: list = [None] * world.world_size
    torch.distributed.all_gather_object(values, value)
    return values


def finish(run: Run) -> dict[str, Any]:
    """Test the final weights, check the ranks agree on them, write metrics.jsonl and summary.json."""
    r, world = run.recipe, run.world
    test = evaluate(run.eval_net, run.loaders["test"], run.amp_dtype, r.tta_flip, len(run.classes), world)
    digests = _gather(_weight_digest(run.model), world)
    digests = digests if isinstance(digests, list) else [digests]
    if len(set(digests)) > 1:
        raise TrainingError(f"the ranks ended with different weights ({len(set(digests))} distinct): "
                            "data-parallel training went out of sync")
    last, best = run.history[-1], run.best
    summary = {"type": "test", "test_loss": test["loss"], "test_acc": test["top1"], "test_top5": test["top5"],
               "test_images": test["images"], "confusion": test["confusion"], "final_train_acc": last["train_acc"],
               "final_val_acc": last["val_acc"], "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
               "epochs": last["epoch"], "wall_seconds": time.perf_counter() - run.wall0,
               "mean_images_per_s": float(np.mean([h["images_per_s"] for h in run.history])),
               "classes": list(run.classes), "world_size": world.world_size, "rank_weight_digests": digests}
    if world.is_main:
        write_jsonl(run.out / "metrics.jsonl", [run.config, *run.history, summary])
        write_json(run.out / "summary.json", summary)
        val = (f"val {100 * summary['final_val_acc']:.2f}% (best {100 * best['val_acc']:.2f}% at epoch "
               f"{best['epoch']})" if best["val_acc"] is not None else "no val split")
        err.print(f"done: test acc {100 * summary['test_acc']:.2f}% (top-5 {100 * summary['test_top5']:.2f}%), "
                  f"final train {100 * summary['final_train_acc']:.2f}%, {val}, "
                  f"{summary['wall_seconds'] / 60:.1f} min, {summary['mean_images_per_s']:.0f} img/s")
    return summary


def _weight_digest(model: torch.nn.Module) -> str:
    """sha256 of the weights: DDP promises every rank ends bit-identical; `finish` checks it."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = ["Run", "RunOptions", "TrainingError", "fit"]
