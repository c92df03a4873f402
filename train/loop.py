"""The training run, top to bottom: setup, epochs (train, validate, checkpoint), test.

Reads like a script on purpose: `fit` is the whole story, the helpers above it
are one step each.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from alexpipe.model import build_model
from alexpipe.pipeline import load_split, make_loader

from . import checkpoint, distributed
from .metrics import EpochMeter, EvalMeter, write_jsonl
from .inputs import feed
from .interrupt import GracefulInterrupt, Interrupted
from .plot import plot_curves
from .recipes import Recipe, validate
from .schedule import Schedule, build_optimizer
from .step import TrainStep, build_step, compiled, new_generation

console = Console(stderr=True)


class TrainingError(Exception):
    """A run that cannot start or continue; the message is shown as one line."""


class NonFiniteLoss(TrainingError):
    pass


@dataclass
class RunOptions:
    """How to run a recipe: where, on what, and with which speed knobs (none change the maths)."""

    data: Path
    out: Path
    recipe: Recipe = field(default_factory=Recipe)
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: Optional[bool] = None  # default: on for CUDA, off on CPU (measured: see README)
    compile: bool = False  # torch.compile the step (model, loss) and the resident augmentation
    compile_mode: Optional[str] = None  # torch.compile's mode: default | reduce-overhead | max-autotune ...
    subset: Optional[int] = None  # class-balanced subset of the train split
    eval_subset: Optional[int] = None  # class-balanced subset of val and test (quick runs)
    num_workers: int = 2
    resume: bool = False
    force: bool = False
    log_every: int = 20
    command: str = ""
    index_log: Optional[Path] = None  # test hook: append the train indices each rank sees
    dist_timeout: float = 600.0  # seconds before a stuck collective fails the job


# ---------------------------------------------------------------- setup helpers


def resolve_device(name: str, world: distributed.World) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise TrainingError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA GPU is available")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", world.local_rank)


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = full float32)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise TrainingError(f"--amp must be auto, bf16, fp16 or off, got {amp!r}")
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":  # native bf16 only: pre-Ampere GPUs (T4, V100) emulate it slowly, so fp16 there
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def balanced_subset(labels: np.ndarray, n: int, seed: int, num_classes: int) -> np.ndarray:
    """`n` positions, n / num_classes per class, chosen by `seed`, ascending."""
    if n <= 0 or n % num_classes:
        raise TrainingError(f"subset size must be a positive multiple of {num_classes}, got {n}")
    rng = np.random.default_rng([seed, 0x5EB5E7])
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n // num_classes:
            raise TrainingError(f"subset of {n} needs {n // num_classes} images of class {c}, only {len(idx)} exist")
        chosen.append(rng.choice(idx, n // num_classes, replace=False))
    return np.sort(np.concatenate(chosen))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str:
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


def data_identity(root: Path) -> dict[str, str]:
    return {s: load_split(root, s).meta.content_sha256 for s in ("train", "val") if (root / f"{s}.safetensors").exists()}


# ---------------------------------------------------------------- one epoch of training


@dataclass
class EpochContext:
    """What every training epoch shares: the step, the world, and how to report and stop."""

    step: TrainStep
    world: distributed.World
    device: torch.device
    log_every: int = 20
    stop: Optional[GracefulInterrupt] = None
    bar: Optional[Progress] = None
    index_log: Optional[Path] = None  # test hook: append the train indices each rank sees


def train_epoch(ctx: EpochContext, net: torch.nn.Module, loader, epoch: int) -> dict[str, float]:
    """One pass over `loader`. Between two progress lines no step waits for the device."""
    net.train()
    meter = EpochMeter(ctx.device)
    steps = len(loader)  # once: the loader caches its epoch order, but the loop need not ask again
    task = ctx.bar.add_task(f"epoch {epoch}", total=steps, info="") if ctx.bar else None
    wait, t_start = 0.0, time.perf_counter()
    logged = (0, t_start)
    batches = iter(loader)
    for step in range(1, steps + 1):
        new_generation(ctx.device)
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        images, labels = batch[0], batch[1]
        if ctx.index_log is not None:
            with open(ctx.index_log, "a") as f:
                f.write(json.dumps({"rank": ctx.world.rank, "epoch": epoch, "index": batch[2].tolist()}) + "\n")
        meter.add(ctx.step(images, labels), labels.shape[0])
        if ctx.stop is not None and not ctx.world.distributed:
            ctx.stop.check()  # a Ctrl-C stops between steps, never inside a checkpoint write
        if step % ctx.log_every == 0 or step == steps:
            logged = _progress(ctx, meter, epoch, step, task, logged)
    seconds = time.perf_counter() - t_start
    if ctx.bar:
        ctx.bar.remove_task(task)
    distributed.all_reduce_sum(meter.sums, ctx.world)
    loss_sum, correct, _ = meter.read()
    count = distributed.sum_int(meter.count, ctx.world, ctx.device)
    if count == 0:
        raise TrainingError("the training loader yielded no batch: the subset is smaller than one batch")
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"the loss became non-finite in epoch {epoch}")
    return {"train_loss": loss_sum / count, "train_acc": correct / count, "train_images": int(count),
            "train_seconds": seconds, "images_per_s": count / seconds, "data_wait_fraction": wait / seconds}


def _progress(ctx: EpochContext, meter: EpochMeter, epoch: int, step: int, task, logged: tuple[int, float]):
    """The progress line: the one place a training epoch reads values back from the device."""
    if ctx.stop is not None and ctx.world.distributed and distributed.any_flag(ctx.stop.requested, ctx.world,
                                                                                ctx.device):
        raise Interrupted
    loss_sum, correct, count = meter.read()
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"the loss became non-finite in epoch {epoch} (step {step})")
    now = time.perf_counter()
    if ctx.bar:
        rate = (count - logged[0]) / max(now - logged[1], 1e-9) * ctx.world.world_size
        ctx.bar.update(task, completed=step, info=f"{rate:7.0f} img/s  loss {loss_sum / count:.4f}  "
                                                  f"acc {100 * correct / count:5.2f}%  "
                                                  f"lr {ctx.step.schedule.lr:.2e}")
    return count, now


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader, amp_dtype: Optional[torch.dtype], tta_flip: bool, num_classes: int,
             world: distributed.World = distributed.World()) -> dict[str, Any]:
    """Loss, top-1/top-5 and the confusion matrix over every image of the loader's split (all ranks).

    The sums stay on the device until the end: one synchronisation per evaluation.
    """
    net.eval()
    meter = EvalMeter(num_classes, loader.cfg.device)
    batches = iter(loader)
    while True:
        new_generation(loader.cfg.device)
        batch = next(batches, None)
        if batch is None:
            break
        images, labels = batch[0], batch[1]
        with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(images).float()
            if tta_flip:
                logits = 0.5 * (logits + net(images.flip(3)).float())
        meter.add(logits, labels)
    distributed.all_reduce_sum(meter.sums, world)
    distributed.all_reduce_sum(meter.confusion, world)
    n = distributed.sum_int(meter.count, world, meter.sums.device)
    loss_sum, top1, top5 = meter.sums.tolist()
    return {"loss": loss_sum / max(n, 1), "top1": top1 / max(n, 1), "top5": top5 / max(n, 1), "images": n,
            "confusion": meter.confusion.cpu().tolist()}


# ---------------------------------------------------------------- the run


def fit(opt: RunOptions) -> dict[str, Any]:
    """Train `opt.recipe` on `opt.data` into `opt.out`; returns the final summary."""
    r = opt.recipe
    try:
        validate(r)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    world = distributed.world_from_env()
    device = resolve_device(opt.device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # training batches have one static shape (drop_last)
    distributed.init(world, device, opt.dist_timeout)
    try:
        return _fit(opt, r, world, device)
    finally:
        distributed.shutdown(world)


def _fit(opt: RunOptions, r: Recipe, world: distributed.World, device: torch.device) -> dict[str, Any]:
    out = Path(opt.out)
    last_path = out / "last.pt"
    if world.is_main:
        if last_path.exists() and not opt.resume and not opt.force:
            raise TrainingError(f"{out} already holds a run (last.pt); pass --resume to continue it, "
                                "or --force to start over")
        out.mkdir(parents=True, exist_ok=True)
    if r.batch_size % world.world_size:
        raise TrainingError(f"batch size {r.batch_size} does not divide among {world.world_size} processes")
    amp_dtype = resolve_amp(opt.amp, device)
    channels_last = device.type == "cuda" if opt.channels_last is None else opt.channels_last

    # ---- data
    data = Path(opt.data)
    train_split = load_split(data, "train")
    classes = train_split.meta.classes
    num_classes = len(classes)
    subset = (balanced_subset(train_split.labels.numpy(), opt.subset, r.seed, num_classes)
              if opt.subset else None)

    def eval_indices(split_name: str):
        if not opt.eval_subset:
            return None
        return balanced_subset(load_split(data, split_name).labels.numpy(), opt.eval_subset, r.seed, num_classes)

    common = dict(device=device, dtype=amp_dtype or torch.float32, channels_last=channels_last, seed=r.seed,
                  rank=world.rank, world_size=world.world_size, num_workers=opt.num_workers)
    if r.loader == "resident" and opt.compile:  # the augmentation is part of the hot path: compile it too
        common.update(compile=True, compile_mode=opt.compile_mode)
    train_loader = make_loader(data, "train", r.loader, batch_size=r.batch_size // world.world_size, pca=r.pca,
                               pca_sigma=r.pca_sigma, indices=subset, with_index=opt.index_log is not None,
                               **common)
    eval_batch = max(256, r.batch_size // world.world_size)
    val_loader = make_loader(data, "val", r.loader, batch_size=eval_batch, indices=eval_indices("val"), **common)
    identity = {"train": train_split.meta.content_sha256, "val": val_loader.split.meta.content_sha256,
                "subset": None if subset is None else [int(i) for i in subset]}

    # ---- model and optimiser
    seed_everything(r.seed)
    model = build_model(r.model, num_classes=num_classes, init=r.init, dropout=r.dropout).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, r)
    schedule = Schedule(optimizer, r, steps_per_epoch=len(train_loader))
    net = feed(model, r.inputs, train_split.meta.stats.std)
    if world.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    step = build_step(net, optimizer, schedule, amp_dtype=amp_dtype, clip_grad_norm=r.clip_grad_norm,
                      label_smoothing=r.label_smoothing, compile=opt.compile, compile_mode=opt.compile_mode)
    eval_net = compiled(net, opt.compile_mode) if opt.compile else net

    history: list[dict[str, Any]] = []
    start_epoch, best = 1, {"val_acc": -1.0, "epoch": 0}
    if opt.resume:
        ckpt = checkpoint.load(last_path)
        _check_resumable(ckpt, r, identity, opt.force, world)
        model.load_state_dict(ckpt["model"])
        checkpoint.restore_optimizer(optimizer, ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        if step.scaler.is_enabled() and ckpt.get("scaler"):
            step.scaler.load_state_dict(ckpt["scaler"])
        history, best = ckpt["history"], ckpt["best"]
        start_epoch = ckpt["epoch"] + 1
        checkpoint.set_rng_state(ckpt["rng"][world.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        if world.is_main:
            console.print(f"resuming {out} after epoch {ckpt['epoch']} of {r.epochs}")

    run_info = {"type": "config", "recipe": r.to_dict(), "git_commit": git_commit(), "command": opt.command,
                "device": str(device), "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
                "channels_last": channels_last, "compile": opt.compile,
                "compile_mode": opt.compile_mode if opt.compile else None, "world_size": world.world_size,
                "subset": opt.subset, "eval_subset": opt.eval_subset, "data": str(data),
                "data_sha256": {"train": identity["train"], "val": identity["val"]},
                "torch": str(torch.__version__), "python": sys.version.split()[0]}
    if world.is_main:
        (out / "config.json").write_text(json.dumps(run_info, indent=2) + "\n")

    # ---- epochs
    wall0 = time.perf_counter() - (history[-1]["wall_seconds"] if history else 0.0)
    bar = (Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=True)
           if world.is_main else None)
    epoch = start_epoch - 1
    with GracefulInterrupt() as stop:
        ctx = EpochContext(step, world, device, opt.log_every, stop, bar, opt.index_log)  # the first Ctrl-C only raises a flag, checked between steps
        try:
            if bar:
                bar.start()
            for epoch in range(start_epoch, r.epochs + 1):
                train_loader.set_epoch(epoch)
                lr = schedule.lr
                stats = train_epoch(ctx, net, train_loader, epoch)
                val = evaluate(eval_net, val_loader, amp_dtype, r.tta_flip, num_classes, world)
                schedule.after_epoch(val["loss"])
                record = {"type": "epoch", "epoch": epoch, **stats, "val_loss": val["loss"],
                          "val_acc": val["top1"], "val_top5": val["top5"], "val_images": val["images"], "lr": lr,
                          "epoch_seconds": stats["train_seconds"], "wall_seconds": time.perf_counter() - wall0}
                history.append(record)
                improved = val["top1"] > best["val_acc"]
                if improved:
                    best = {"val_acc": val["top1"], "epoch": epoch}
                rngs = _gather_rng(world)
                if world.is_main:
                    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "schedule": schedule.state_dict(), "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None,
                             "rng": rngs, "recipe": r.to_dict(), "data": identity, "history": history,
                             "best": best, "classes": list(classes), "run": run_info}
                    _publish_epoch(out, state, improved, run_info, r)
                distributed.barrier(world)
        except (Interrupted, KeyboardInterrupt):
            done = f"{last_path} holds the end of epoch {epoch - 1}" if epoch > 1 else "no epoch had finished"
            raise TrainingError(f"interrupted during epoch {epoch}; {done}: "
                                f"continue with `alexpipe train --out {out} --resume`") from None
        finally:
            if bar:
                bar.stop()

    # ---- test
    test_loader = make_loader(data, "test", r.loader, batch_size=eval_batch, indices=eval_indices("test"), **common)
    test = evaluate(eval_net, test_loader, amp_dtype, r.tta_flip, num_classes, world)
    digests = _gather_weight_digests(model, world)
    if len(set(digests)) > 1:
        raise TrainingError(f"the ranks ended with different weights ({len(set(digests))} distinct): "
                            "data-parallel training went out of sync")
    last = history[-1]
    summary = {"type": "test", "test_loss": test["loss"], "test_acc": test["top1"], "test_top5": test["top5"],
               "test_images": test["images"], "confusion": test["confusion"], "final_train_acc": last["train_acc"],
               "final_val_acc": last["val_acc"], "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
               "epochs": last["epoch"], "wall_seconds": time.perf_counter() - wall0,
               "mean_images_per_s": float(np.mean([h["images_per_s"] for h in history])), "classes": list(classes),
               "world_size": world.world_size, "rank_weight_digests": digests}
    if world.is_main:
        write_jsonl(out / "metrics.jsonl", [run_info, *history, summary])
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        console.print(
            f"done: test acc {100 * summary['test_acc']:.2f}% (top-5 {100 * summary['test_top5']:.2f}%), final "
            f"train {100 * summary['final_train_acc']:.2f}%, val {100 * summary['final_val_acc']:.2f}% "
            f"(best {100 * best['val_acc']:.2f}% at epoch {best['epoch']}), {summary['wall_seconds'] / 60:.1f} min, "
            f"{summary['mean_images_per_s']:.0f} img/s", highlight=False)
    return summary


def _publish_epoch(out: Path, state: dict[str, Any], improved: bool, run_info: dict, r: Recipe) -> None:
    """Rank 0, end of an epoch: checkpoints first (atomic), then the metrics file, the curves, one line."""
    checkpoint.save_atomic(state, out / "last.pt")
    if improved:
        checkpoint.save_atomic(state, out / "best.pt")
    history = state["history"]
    write_jsonl(out / "metrics.jsonl", [run_info, *history])
    plot_curves(history, out / "curves.png", title=f"alexpipe {r.name} recipe")
    rec = history[-1]
    console.print(
        f"epoch {rec['epoch']:3d}/{r.epochs}  train loss {rec['train_loss']:.4f} acc {100 * rec['train_acc']:5.2f}%  "
        f"val loss {rec['val_loss']:.4f} acc {100 * rec['val_acc']:5.2f}%  lr {rec['lr']:.2e}  "
        f"{rec['images_per_s']:6.0f} img/s  data wait {100 * rec['data_wait_fraction']:4.1f}%  "
        f"{rec['epoch_seconds']:5.1f}s", highlight=False)


def _gather_weight_digests(model: torch.nn.Module, world: distributed.World) -> list[str]:
    """sha256 of every rank's final weights: DDP promises they are bit-identical; check it."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    if not world.distributed:
        return [digest]
    out: list = [None] * world.world_size
    torch.distributed.all_gather_object(out, digest)
    return out


def _gather_rng(world: distributed.World):
    """Every rank's RNG state (dropout differs per rank), gathered so rank 0 can save them all."""
    state = checkpoint.rng_state()
    if not world.distributed:
        return state
    states: list = [None] * world.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _check_resumable(ckpt: dict, r: Recipe, identity: dict, force: bool, world: distributed.World) -> None:
    saved_world = len(ckpt["rng"]) if isinstance(ckpt["rng"], list) else 1
    if saved_world != world.world_size:  # per-rank RNG states and shards would not line up
        raise TrainingError(f"cannot resume: the run used {saved_world} process(es), this is {world.world_size}")
    problems = []
    saved = Recipe.from_dict(ckpt["recipe"])
    diff = {k: (v, getattr(r, k)) for k, v in saved.to_dict().items()
            if k != "epochs" and r.to_dict()[k] != v}
    if diff:
        problems.append("the recipe differs from the run's: " +
                        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
    for key in ("train", "val", "subset"):
        if ckpt["data"].get(key) != identity.get(key):
            problems.append(f"the {key} data differs from the one the run was trained on")
    if ckpt["epoch"] >= r.epochs:
        problems.append(f"the run already finished its {ckpt['epoch']} epochs (raise --epochs to continue)")
    if problems and not force:
        raise TrainingError("cannot resume: " + "; ".join(problems) + " (pass --force to resume anyway)")
