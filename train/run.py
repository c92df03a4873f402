"""A training run, top to bottom: start, the run folder, the data, the network and its step, resume, the
epochs, the test.

`fit` is the whole story. Each stage returns what it builds and the next ones
are handed it: `Setup` (where and how the run runs), `Data` (the verified data
and its loaders), `Nets` (the network and the two ways the run calls it), the
`TrainStep`, and `Progress`, the one thing the epochs change. The run folder
(its lock, its records) is train/folder.py; resuming is train/resume.py; what
an epoch's end keeps and writes is train/bookkeeping.py. docs/design.md says
where each stage's responsibility ends.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from alexpipe.model import build_model
from alexpipe.pipeline import DataError, load_split, make_loader, verify_dataset
from alexpipe.pipeline.format.integrity import read_manifest
from alexpipe.pipeline.sampling import ShortClass, balanced_choice
from alexpipe.terminal import console, literal, note

from . import checkpoint, distributed
from .bookkeeping import Books
from .errors import RunInterrupted, TrainingError
from .folder import locked_out, prepare_out, record_config, resume_hint
from .hardware import (COMPILE_MODES, amp_note, compile_seconds, prepare_device, resolve_amp, resolve_device,
                       use_compile_cache)
from .inputs import feed
from .interrupt import GracefulInterrupt, Interrupted, StopNow
from .loop import EpochContext, evaluate, train_epoch
from .metrics import write_json
from .parts import Data, Nets, Progress, RunOptions, Setup
from .progress import EpochProgress
from .recipes import validate
from .resume import resume
from .step import TrainStep, compiled, recipe_step, without_cuda_graphs

err = console(stderr=True)
EVAL_BATCH = 500  # images per evaluation batch: few launches on a GPU, and bounded memory on a CPU


def fit(opt: RunOptions) -> dict[str, Any]:
    """Train `opt.recipe` on `opt.data` into `opt.out`; returns the final summary."""
    setup = start(opt)
    books: Optional[Books] = None
    try:
        with StopNow(), locked_out(setup.out, Path(opt.data), setup.world.is_main):
            prepare_out(setup.out, opt.resume, opt.force)
            data = load_data(setup)
            nets, step = build(setup, data)
            progress = resume(setup, data, nets.model, step) if opt.resume else Progress()
            config = record_config(setup, data.identity, step.kind, progress.resumed)
            books = Books(setup, data, nets.model, step, config, progress)
            train_epochs(setup, data, nets, step, books, progress)
            return finish(setup, data, nets, step, books, progress)
    except Interrupted as exc:  # before the first step or after the last (train_epochs handles its own)
        raise _interrupted(setup, books, exc.signum) from None
    finally:
        if books is not None:
            books.close(interrupted=True)  # after a failure: what finished is written (a no-op once closed)
        distributed.shutdown(setup.world)


def _interrupted(setup: Setup, books: Optional[Books], signum: int) -> RunInterrupted:
    """The one line for a signal outside the epochs, with the command that continues the run where one does."""
    kept = books.close(interrupted=True) if books is not None else 0
    if kept:
        done = f"after training; {setup.out / 'last.pt'} holds the end of epoch {kept}"
    elif setup.opt.resume:
        done = f"before the first epoch; {setup.out / 'last.pt'} is as it was"
    else:
        done = "before the first epoch; nothing to resume: the same command starts the run again"
    hint = f": continue with `{resume_hint(setup.out, setup.world)}`" if kept or setup.opt.resume else ""
    return RunInterrupted(f"interrupted ({signal.Signals(signum).name}) {done}{hint}", signum)


def start(opt: RunOptions) -> Setup:
    """Check the recipe and options, find the device, join the process group under torchrun."""
    try:
        validate(opt.recipe)
        if opt.compile_mode not in (None, *COMPILE_MODES):
            raise ValueError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {opt.compile_mode!r}")
        if opt.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be at least 1, got {opt.checkpoint_every}")
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
    prepare_device(device)
    if opt.compile:
        use_compile_cache()
    distributed.init(world, device, opt.dist_timeout)
    channels_last = device.type == "cuda" if opt.channels_last is None else opt.channels_last
    return Setup(opt, world, device, amp_dtype, channels_last)


def load_data(setup: Setup) -> Data:
    """Verify the data (manifest, headers, content digests), then make the loaders (a subset of each where
    asked), each rank its shard. Everything the run will need is checked here, before the first step."""
    opt, r, world = setup.opt, setup.recipe, setup.world
    folder = Path(opt.data)
    try:
        has_val = "val.safetensors" in read_manifest(folder)["files"]
        splits = ["train", "val", "test"] if has_val else ["train", "test"]
        digests = verify_dataset(folder, splits)  # the digests of the bytes read, not the ones recorded
    except DataError as exc:
        if opt.data_from is None:
            raise
        raise DataError(f"{exc} (the data folder recorded in {opt.data_from}; pass --data to use another)") from None
    if not has_val:
        if r.schedule == "plateau":
            raise TrainingError(f"{folder} has no val split (converted with --val-size 0), and the plateau "
                                "schedule cuts the lr on the val loss: choose --schedule step or onecycle")
        if world.is_main:
            err.print(f"note: {literal(folder)} has no val split (converted with --val-size 0): no per-epoch "
                      "validation; best.pt is the last epoch")
    train_split = load_split(folder, "train")
    classes = train_split.meta.classes
    subset = (_subset(train_split.labels.numpy(), opt.subset, r.seed, len(classes), "--subset")
              if opt.subset else None)
    common = dict(device=setup.device, dtype=setup.amp_dtype or torch.float32, channels_last=setup.channels_last,
                  seed=r.seed, rank=world.rank, world_size=world.world_size, num_workers=opt.num_workers)
    eval_batch = max(EVAL_BATCH, r.batch_size // world.world_size)

    def eval_loader(name: str) -> Any:
        labels = load_split(folder, name).labels.numpy()
        indices = (_subset(labels, opt.eval_subset, r.seed, len(classes), "--eval-subset")
                   if opt.eval_subset else None)
        return make_loader(folder, name, r.loader, batch_size=eval_batch, indices=indices, **common)

    train = make_loader(folder, "train", r.loader, batch_size=r.batch_size // world.world_size, pca=r.pca,
                        pca_sigma=r.pca_sigma, indices=subset, **common)
    identity = {"train": digests["train"], "val": digests.get("val"), "test": digests["test"],
                "subset": None if subset is None else [int(i) for i in subset]}
    return Data(classes, train, eval_loader("val") if has_val else None, eval_loader("test"), identity)


def _subset(labels: np.ndarray, n: int, seed: int, num_classes: int, flag: str = "--subset") -> np.ndarray:
    """`n` positions, n / num_classes per class, chosen by `seed`, ascending."""
    if n <= 0 or n % num_classes:
        raise TrainingError(f"{flag} must be a positive multiple of {num_classes}, got {n}")
    try:
        return balanced_choice(labels, n // num_classes, np.random.default_rng([seed, 0x5EB5E7]), num_classes)
    except ShortClass as short:
        raise TrainingError(f"{flag} {n} needs {n // num_classes} images of class {short.label}, only "
                            f"{short.available} exist") from None


def build(setup: Setup, data: Data) -> tuple[Nets, TrainStep]:
    """The network (seeded), and the training step that drives it (its optimiser and schedule inside)."""
    r, opt = setup.recipe, setup.opt
    random.seed(r.seed)
    np.random.seed(r.seed)
    torch.manual_seed(r.seed)
    model = build_model(r.model, num_classes=len(data.classes), init=r.init, dropout=r.dropout).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trained = feed(model, r.inputs, data.train.split.meta.stats.std)
    if setup.world.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[setup.device.index] if setup.device.type == "cuda" else None)
    try:
        step = recipe_step(model, r, len(data.train), net=trained, amp_dtype=setup.amp_dtype,
                           compile=opt.compile, compile_mode=opt.compile_mode, capture=opt.cuda_graphs)
    except ValueError as exc:
        raise TrainingError(f"--cuda-graphs: {exc}") from None
    mode = without_cuda_graphs(opt.compile_mode) if step.capture else opt.compile_mode
    evaluated = compiled(trained, mode) if opt.compile else trained
    return Nets(model, trained, evaluated, data.test.cfg.batch_size if opt.compile else None), step


def train_epochs(setup: Setup, data: Data, nets: Nets, step: TrainStep, books: Books, progress: Progress) -> None:
    """The epochs: train, validate, step the schedule, keep what an epoch's end must keep. A Ctrl-C stops between
    two steps; on the way out, for whatever reason, the last finished epoch is written (`Books.close`)."""
    r, world = setup.recipe, setup.world
    progress.wall0 = time.perf_counter() - (progress.history[-1]["wall_seconds"] if progress.history else 0.0)
    epoch = progress.start_epoch - 1
    bar = EpochProgress(err) if world.is_main else None
    with GracefulInterrupt() as stop, bar or contextlib.nullcontext():
        ctx = EpochContext(step, world, setup.device, setup.opt.log_every, stop, bar)
        try:
            for epoch in range(progress.start_epoch, r.epochs + 1):
                t0, compiling = time.perf_counter(), compile_seconds()
                data.train.set_epoch(epoch)
                lr = step.schedule.lr
                stats = train_epoch(ctx, nets.trained, data.train, epoch)
                t_val = time.perf_counter()
                val = _validate(setup, data, nets)
                val_seconds = time.perf_counter() - t_val
                step.schedule.after_epoch(val["loss"])
                progress.history.append({"type": "epoch", "epoch": epoch, **stats, "val_loss": val["loss"],
                                         "val_acc": val["top1"], "val_top5": val["top5"],
                                         "val_images": val["images"], "val_seconds": val_seconds, "lr": lr})
                _end_epoch(setup, nets, books, progress, t0, compiling)
        except (Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else (stop.requested or signal.SIGINT)
            kept = books.close(interrupted=True, abandon=isinstance(exc, KeyboardInterrupt))  # a 2nd signal
            done = (f"{setup.out / 'last.pt'} holds the end of epoch {kept}: continue with "
                    f"`{resume_hint(setup.out, world)}`" if kept
                    else "no checkpoint was written: the same command starts the run again")
            raise RunInterrupted(f"interrupted ({signal.Signals(signum).name}) during epoch {epoch}; {done}",
                                 signum) from None
        except BaseException:
            books.close(interrupted=True)
            raise


def _validate(setup: Setup, data: Data, nets: Nets) -> dict[str, Any]:
    """The epoch's validation (all None without a val split)."""
    if data.val is None:
        return {"loss": None, "top1": None, "top5": None, "images": 0}
    return evaluate(nets.evaluated, data.val, setup.amp_dtype, setup.recipe.tta_flip, len(data.classes),
                    setup.world, pad_to=nets.eval_shape)


def _end_epoch(setup: Setup, nets: Nets, books: Books, progress: Progress, t0: float, compiling: float) -> None:
    """An epoch's end: remember the best weights and this epoch's state (copies on the device), have the files
    written in the background, and record how long all of it kept the epoch from training
    (`outside_seconds`)."""
    world, rec = setup.world, progress.history[-1]
    if rec["val_acc"] is None or rec["val_acc"] > progress.best["val_acc"]:  # no val split: every epoch is best
        progress.best = {"val_acc": rec["val_acc"], "epoch": rec["epoch"]}
        if world.is_main:
            books.best.take({"model": nets.model.state_dict()}, epoch=rec["epoch"])
    rngs = _gather(checkpoint.rng_state(), world)  # every rank's: a resumed rank continues its own draws
    if world.is_main:
        books.keep(rec["epoch"], rngs)
    now = time.perf_counter()
    rec.update(epoch_seconds=now - t0, wall_seconds=now - progress.wall0,
               compile_seconds=compile_seconds() - compiling,
               outside_seconds=max(0.0, now - t0 - rec["train_seconds"] - rec["val_seconds"]))
    if world.is_main:
        books.publish(rec["epoch"])
        _print_epoch(rec, setup.recipe.epochs)
    distributed.barrier(world)


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


def finish(setup: Setup, data: Data, nets: Nets, step: TrainStep, books: Books,
           progress: Progress) -> dict[str, Any]:
    """Test the final weights, check the ranks agree on them, write metrics.jsonl and summary.json."""
    r, world = setup.recipe, setup.world
    test = evaluate(nets.evaluated, data.test, setup.amp_dtype, r.tta_flip, len(data.classes), world,
                    pad_to=nets.eval_shape)
    digests = _gather(checkpoint.digest(nets.model.state_dict()), world)  # DDP: every rank bit-identical
    digests = digests if isinstance(digests, list) else [digests]
    if len(set(digests)) > 1:
        raise TrainingError(f"the ranks ended with different weights ({len(set(digests))} distinct): "
                            "data-parallel training went out of sync")
    last, best = progress.history[-1], progress.best
    summary = {"type": "test", "test_loss": test["loss"], "test_acc": test["top1"], "test_top5": test["top5"],
               "test_images": test["images"], "confusion": test["confusion"], "final_train_acc": last["train_acc"],
               "final_val_acc": last["val_acc"], "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
               "epochs": last["epoch"], "wall_seconds": time.perf_counter() - progress.wall0,
               "mean_images_per_s": float(np.mean([h["images_per_s"] for h in progress.history])),
               "compile_seconds": compile_seconds() - progress.compile0, "capture_seconds": step.capture_seconds,
               "outside_seconds": float(sum(h.get("outside_seconds", 0.0) for h in progress.history)),
               "classes": list(data.classes), "world_size": world.world_size, "rank_weight_digests": digests}
    books.tail = [summary]
    books.close()
    if world.is_main:
        write_json(setup.out / "summary.json", summary)
        val = (f"val {100 * summary['final_val_acc']:.2f}% (best {100 * best['val_acc']:.2f}% at epoch "
               f"{best['epoch']})" if best["val_acc"] is not None else "no val split")
        err.print(f"done: test acc {100 * summary['test_acc']:.2f}% (top-5 {100 * summary['test_top5']:.2f}%), "
                  f"final train {100 * summary['final_train_acc']:.2f}%, {val}, "
                  f"{summary['wall_seconds'] / 60:.1f} min, {summary['mean_images_per_s']:.0f} img/s")
    return summary


__all__ = ["RunOptions", "TrainingError", "fit"]
