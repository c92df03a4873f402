"""A training run, top to bottom: start, the run folder, the data, the model, resume, the epochs, the test.

`fit` is the whole story; each function after it is one step, and they share
one `Run`. docs/design.md says where each step's responsibility ends.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import random
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from alexpipe.lock import LockHeld, exclusive
from alexpipe.model import build_model
from alexpipe.pipeline import DataError, load_split, make_loader, verify_dataset
from alexpipe.pipeline.format.integrity import read_manifest
from alexpipe.pipeline.sampling import ShortClass, balanced_choice
from alexpipe.provenance import git_commit
from alexpipe.terminal import console, literal, note

from . import checkpoint, distributed
from .bookkeeping import Snapshot, WriteFailed, Writer, remove_temporaries
from .errors import RunInterrupted, TrainingError
from .hardware import (COMPILE_MODES, amp_note, compile_seconds, prepare_device, resolve_amp, resolve_device,
                       use_compile_cache)
from .inputs import feed
from .interrupt import GracefulInterrupt, Interrupted, StopNow
from .loop import EpochContext, evaluate, train_epoch
from .metrics import write_json, write_jsonl
from .plot import plot_curves
from .progress import EpochProgress
from .recipes import Recipe, validate
from .step import TrainStep, compiled, recipe_step, without_cuda_graphs

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
    compile: bool = False  # torch.compile the step (model, loss, clipping) and the evaluation
    compile_mode: Optional[str] = None  # torch.compile's mode: default | reduce-overhead | max-autotune ...
    cuda_graphs: Optional[bool] = None  # capture the whole step in a CUDA graph (default: wherever it can be)
    checkpoint_every: int = 5  # epochs between writes of last.pt (it is also written at the end and on a stop)
    subset: Optional[int] = None  # class-balanced subset of the train split
    eval_subset: Optional[int] = None  # class-balanced subset of val and test (quick runs)
    num_workers: int = 2
    resume: bool = False
    force: bool = False
    log_every: int = 20
    command: str = ""
    dist_timeout: float = 600.0  # seconds before a stuck collective fails the job
    data_from: Optional[str] = None  # where --data came from when the user did not give it (a run's config.json)


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
    eval_shape: Optional[int] = None  # with --compile, every evaluation batch is padded to this many images
    step: Optional[TrainStep] = None
    books: Optional["Books"] = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    start_epoch: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    resumed: Optional[dict[str, Any]] = None  # after `resume`: the epoch it continues after, and what changed
    wall0: float = 0.0  # perf_counter() at which the run's wall clock (continued across resumes) started
    compile0: float = field(default_factory=compile_seconds)  # this process's compile time before the run

    @property
    def out(self) -> Path:
        return Path(self.opt.out)


def fit(opt: RunOptions) -> dict[str, Any]:
    """Train `opt.recipe` on `opt.data` into `opt.out`; returns the final summary."""
    run = start(opt)
    try:
        with StopNow(), locked_out(run):
            prepare_out(run)
            load_data(run)
            build(run)
            if opt.resume:
                resume(run)
            record_config(run)
            train_epochs(run)
            return finish(run)
    except Interrupted as exc:  # before the first step or after the last (train_epochs handles its own)
        kept = run.books.close(interrupted=True) if run.books is not None else 0
        if kept:
            done = f"after training; {run.out / 'last.pt'} holds the end of epoch {kept}"
        elif opt.resume:
            done = f"before the first epoch; {run.out / 'last.pt'} is as it was"
        else:
            done = "before the first epoch; nothing to resume: the same command starts the run again"
        hint = f": continue with `{_resume_hint(run)}`" if kept or opt.resume else ""
        raise RunInterrupted(f"interrupted ({signal.Signals(exc.signum).name}) {done}{hint}", exc.signum) from None
    finally:
        if run.books is not None:
            run.books.close(interrupted=True)  # after a failure: what finished is written (a no-op once closed)
        distributed.shutdown(run.world)


def start(opt: RunOptions) -> Run:
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
    return Run(opt, opt.recipe, world, device, amp_dtype=amp_dtype, channels_last=channels_last)


RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt", "summary.json")
RUN_LOCK = ".alexpipe.lock"  # held by the live run in its folder (alexpipe/lock.py); gone when it ends


@contextlib.contextmanager
def locked_out(run: Run) -> Iterator[None]:
    """The run folder, locked by this run for its whole life (rank 0, the one that writes): a second run, a
    --resume or a --force into it is refused while this one lives. The folder is made for the lock; if the run
    fails before it records anything, the folders made for it are removed again."""
    out, data = run.out, Path(run.opt.data)
    if not run.world.is_main:
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


def prepare_out(run: Run) -> None:
    """The run folder must be new, empty, or an alexpipe run (then --resume or --force; a run that never
    finished an epoch is simply started again): nothing else of the user's is ever overwritten."""
    out = run.out
    entries = [p for p in out.iterdir() if p.name != RUN_LOCK] if out.is_dir() else []
    if run.opt.resume or not entries:
        return
    if not _holds_run(out):
        raise TrainingError(f"--out {out} holds files that are not an alexpipe run: train writes only into a new "
                            "or empty folder, or one of its own runs (which --force replaces)")
    if not (out / "last.pt").exists():
        return  # its first epoch never finished: starting again loses nothing
    if not run.opt.force:
        raise TrainingError(f"{out} already holds a run; pass --resume to continue it, or --force to start over")


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
    try:
        splits = ["train", "val", "test"] if "val.safetensors" in read_manifest(data)["files"] else ["train", "test"]
        digests = verify_dataset(data, splits)  # the digests of the bytes read, not the ones recorded
    except DataError as exc:
        if opt.data_from is None:
            raise
        raise DataError(f"{exc} (the data folder recorded in {opt.data_from}; pass --data to use another)") from None
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
    eval_batch = max(EVAL_BATCH, r.batch_size // world.world_size)
    run.loaders["train"] = make_loader(data, "train", r.loader, batch_size=r.batch_size // world.world_size,
                                       pca=r.pca, pca_sigma=r.pca_sigma, indices=subset, **common)
    run.loaders["val"] = None
    for name in splits[1:]:
        labels = load_split(data, name).labels.numpy()
        indices = (_subset(labels, opt.eval_subset, r.seed, len(run.classes), "--eval-subset")
                   if opt.eval_subset else None)
        run.loaders[name] = make_loader(data, name, r.loader, batch_size=eval_batch, indices=indices, **common)
    run.identity = {"train": digests["train"], "val": digests.get("val"), "test": digests["test"],
                    "subset": None if subset is None else [int(i) for i in subset]}


EVAL_BATCH = 500  # images per evaluation batch: few launches on a GPU, and bounded memory on a CPU


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
    net = feed(model, r.inputs, run.loaders["train"].split.meta.stats.std)
    if run.world.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.model, run.net = model, net
    try:
        run.step = recipe_step(model, r, len(run.loaders["train"]), net=net, amp_dtype=run.amp_dtype,
                               compile=opt.compile, compile_mode=opt.compile_mode, capture=opt.cuda_graphs)
    except ValueError as exc:
        raise TrainingError(f"--cuda-graphs: {exc}") from None
    mode = without_cuda_graphs(opt.compile_mode) if run.step.capture else opt.compile_mode
    run.eval_net = compiled(net, mode) if opt.compile else net
    run.eval_shape = run.loaders["test"].cfg.batch_size if opt.compile else None


def resume(run: Run) -> None:
    """Continue from last.pt: weights, optimiser (in this run's layout and device), schedule, scaler, RNGs.

    With --force, changed settings take effect from here on, and the run's
    config records where (`resumes`): the optimiser's hyper-parameters are
    this recipe's, and a changed schedule continues from the resumed step as
    if it had been this recipe's from the start (the cuts a plateau schedule
    has made carry over).
    """
    ckpt = checkpoint.load(run.out / "last.pt", require=checkpoint.RESUME)
    changes = _check_resumable(ckpt, run)
    step, r = run.step, run.recipe
    run.model.load_state_dict(ckpt["model"])
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
    run.history, run.best, run.start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
    rngs = ckpt["rng"]
    checkpoint.set_rng_state(rngs[run.world.rank] if isinstance(rngs, list) else rngs)
    run.resumed = {"after_epoch": ckpt["epoch"], "changes": changes, "before": ckpt.get("run") or {}}
    if run.world.is_main:
        changed = "; changed from here on: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) \
            if changes else ""
        err.print(f"resuming {literal(run.out)} after epoch {ckpt['epoch']} of {r.epochs}{literal(changed)}")


def _shaping(saved: Recipe, now: Recipe) -> set[str]:
    """The recipe fields whose change reshapes the learning-rate schedule; epochs and the batch size only for
    one-cycle, whose curve spans the run's steps."""
    fields = {"lr", "schedule", "step_epochs", "gamma", "patience", "warmup_epochs"}
    return fields | ({"epochs", "batch_size"} if "onecycle" in (saved.schedule, now.schedule) else set())


def _check_resumable(ckpt: dict, run: Run) -> dict[str, tuple[Any, Any]]:
    """What differs between the checkpoint's run and this one ({name: (before, now)}), after refusing what cannot
    be resumed at all, and, without --force, any change of the maths."""
    saved_world = len(ckpt["rng"]) if isinstance(ckpt["rng"], list) else 1
    if saved_world != run.world.world_size:  # per-rank RNG states and shards would not line up
        raise TrainingError(f"cannot resume: the run used {saved_world} process(es), this is "
                            f"{run.world.world_size}")
    had_val, has_val = ckpt["data"].get("val") is not None, run.identity.get("val") is not None
    if had_val != has_val:  # best.pt, the plateau schedule and the records all depend on it
        raise TrainingError(f"cannot resume: the run was trained {'with' if had_val else 'without'} a val split, "
                            f"and {run.opt.data} has {'none' if had_val else 'one'}; start a new run")
    r, saved = run.recipe, Recipe.from_dict(ckpt["recipe"])
    changes = {k: (v, getattr(r, k)) for k, v in saved.to_dict().items() if r.to_dict()[k] != v}
    visible = {k: v for k, v in changes.items() if k != "epochs" or k in _shaping(saved, r)}  # else: just go on
    before, now = ckpt.get("run") or {}, _options(run)
    settings = {k: (before[k], now[k]) for k in ("amp", "eval_subset") if k in before and before[k] != now[k]}
    changes.update(settings)
    problems = [f"{what} from the run's: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
                for what, diff in (("the recipe differs", visible), ("its settings differ", settings)) if diff]
    if "epochs" in visible:
        problems.append(f"the one-cycle schedule anneals the lr to 0 at its last epoch, so --force rebuilds it "
                        f"for {r.epochs} epochs from epoch {ckpt['epoch'] + 1}")
    for key in ("train", "val", "subset"):
        if ckpt["data"].get(key) != run.identity.get(key):
            problems.append(f"the {key} data differs from the one the run was trained on")
            changes[f"{key} data"] = ("before", "another")
    if ckpt["epoch"] >= r.epochs:
        problems.append(f"the run already finished its {ckpt['epoch']} epochs (raise --epochs to continue)")
    if problems and not run.opt.force:
        raise TrainingError("cannot resume: " + "; ".join(problems) + " (pass --force to resume anyway, with "
                            "the new settings from the resumed epoch on)")
    return changes


def _options(run: Run) -> dict[str, Any]:
    """The run's settings that are not recipe fields, as config.json records them."""
    opt = run.opt
    return {"device": str(run.device), "amp": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "off",
            "channels_last": run.channels_last, "compile": opt.compile,
            "compile_mode": opt.compile_mode if opt.compile else None, "step": run.step.kind,
            "checkpoint_every": opt.checkpoint_every, "world_size": run.world.world_size, "subset": opt.subset,
            "eval_subset": opt.eval_subset}


def record_config(run: Run) -> None:
    """Clear an old run's files (with --force, or a run that never finished an epoch), and write config.json:
    the resolved recipe, the options, the data's identity, where the code came from, and the run's history —
    its first command, then each resume with its time, commit and changes."""
    opt = run.opt
    now = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": opt.command, "git_commit": git_commit()}
    first = run.resumed["before"] if run.resumed else {}
    resumes = list(first.get("resumes") or [])
    if run.resumed:
        resumes.append({**now, "after_epoch": run.resumed["after_epoch"],
                        "changes": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in run.resumed["changes"].items()}})
    run.config = {
        "type": "config", "recipe": run.recipe.to_dict(), **now, **_options(run),
        "data": str(Path(opt.data).resolve()), "data_sha256": {s: run.identity[s] for s in ("train", "val", "test")},
        "torch": str(torch.__version__), "python": sys.version.split()[0], "resumes": resumes}
    for key in ("time", "command", "git_commit"):  # the run's own: how it first started
        run.config[key] = first.get(key, run.config[key])
    if not run.world.is_main:
        return
    try:
        if not opt.resume:
            for name in RUN_FILES:
                (run.out / name).unlink(missing_ok=True)
        write_json(run.out / "config.json", run.config)
    except OSError as exc:
        raise TrainingError(f"cannot write the run folder {run.out}: {exc.strerror or exc}") from None


def train_epochs(run: Run) -> None:
    """The epochs: train, validate, step the schedule, keep what an epoch's end must keep. A Ctrl-C stops between
    two steps; on the way out, for whatever reason, the last finished epoch is written (`Books.close`)."""
    r, world = run.recipe, run.world
    run.wall0 = time.perf_counter() - (run.history[-1]["wall_seconds"] if run.history else 0.0)
    epoch = run.start_epoch - 1
    progress = EpochProgress(err) if world.is_main else None
    run.books = Books(run)
    with GracefulInterrupt() as stop, progress or contextlib.nullcontext():
        ctx = EpochContext(run.step, world, run.device, run.opt.log_every, stop, progress)
        try:
            for epoch in range(run.start_epoch, r.epochs + 1):
                t0, compiling = time.perf_counter(), compile_seconds()
                run.loaders["train"].set_epoch(epoch)
                lr = run.step.schedule.lr
                stats = train_epoch(ctx, run.net, run.loaders["train"], epoch)
                t_val = time.perf_counter()
                val = _validate(run)
                val_seconds = time.perf_counter() - t_val
                run.step.schedule.after_epoch(val["loss"])
                run.history.append({"type": "epoch", "epoch": epoch, **stats, "val_loss": val["loss"],
                                    "val_acc": val["top1"], "val_top5": val["top5"], "val_images": val["images"],
                                    "val_seconds": val_seconds, "lr": lr})
                _end_epoch(run, epoch, t0, compiling)
        except (Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else (stop.requested or signal.SIGINT)
            kept = run.books.close(interrupted=True, abandon=isinstance(exc, KeyboardInterrupt))  # a 2nd signal
            done = (f"{run.out / 'last.pt'} holds the end of epoch {kept}: continue with `{_resume_hint(run)}`"
                    if kept else "no checkpoint was written: the same command starts the run again")
            raise RunInterrupted(f"interrupted ({signal.Signals(signum).name}) during epoch {epoch}; {done}",
                                 signum) from None
        except BaseException:
            run.books.close(interrupted=True)
            raise


def _resume_hint(run: Run) -> str:
    """The command that continues this run, ready to paste into a shell (under torchrun, torchrun's)."""
    args = ["-m", "alexpipe", "train", "--out", str(run.out), "--resume"]
    if run.world.distributed:
        return shlex.join(["torchrun", "--nproc-per-node", str(run.world.world_size), *args])
    return shlex.join(["alexpipe", *args[2:]])


def _validate(run: Run) -> dict[str, Any]:
    """The epoch's validation (all None without a val split)."""
    if run.loaders["val"] is None:
        return {"loss": None, "top1": None, "top5": None, "images": 0}
    return evaluate(run.eval_net, run.loaders["val"], run.amp_dtype, run.recipe.tta_flip, len(run.classes),
                    run.world, pad_to=run.eval_shape)


def _end_epoch(run: Run, epoch: int, t0: float, compiling: float) -> None:
    """An epoch's end: remember the best weights and this epoch's state (copies on the device), have the files
    written in the background, and record how long all of it kept the epoch from training
    (`outside_seconds`)."""
    rec = run.history[-1]
    if rec["val_acc"] is None or rec["val_acc"] > run.best["val_acc"]:  # no val split: every epoch is the best
        run.best = {"val_acc": rec["val_acc"], "epoch": epoch}
        if run.world.is_main:
            run.books.best.take({"model": run.model.state_dict()}, epoch=epoch)
    rngs = _gather(checkpoint.rng_state(), run.world)  # every rank's: a resumed rank continues its own draws
    if run.world.is_main:
        run.books.keep(epoch, rngs)
    now = time.perf_counter()
    rec.update(epoch_seconds=now - t0, wall_seconds=now - run.wall0, compile_seconds=compile_seconds() - compiling,
               outside_seconds=max(0.0, now - t0 - rec["train_seconds"] - rec["val_seconds"]))
    if run.world.is_main:
        run.books.publish(epoch)
        _print_epoch(rec, run.recipe.epochs)
    distributed.barrier(run.world)


class Books:
    """What rank 0 keeps of a run between epochs, and the files it makes of it (train/bookkeeping.py).

    `keep` snapshots the end of every epoch; `publish` queues the files due:
    last.pt every `--checkpoint-every` epochs and after the last one, the
    metrics file every epoch, the curves at most once a minute. `close` writes
    whatever is newer than the files (last.pt, best.pt, the curves) and waits
    for the writer: at the end, on Ctrl-C, on a failure.
    """

    CURVES_EVERY = 60.0  # seconds

    def __init__(self, run: Run):
        self.run = run
        self.writer = Writer()
        self.latest, self.best = Snapshot(), Snapshot()
        self.written = run.start_epoch - 1  # the epoch last.pt holds (a resumed run's, to begin with)
        self.curves_at = time.perf_counter()
        self.tail: list[dict[str, Any]] = []  # records after the epochs' in the metrics file (the test's)
        self.closed = False

    def keep(self, epoch: int, rngs: Any) -> None:
        """This epoch's end, everything a checkpoint holds but the run's records (added when it is written)."""
        step = self.run.step
        self.latest.take({"epoch": epoch, "model": self.run.model.state_dict(),
                          "optimizer": step.optimizer.state_dict(), "schedule": step.schedule.state_dict(),
                          "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None, "rng": rngs},
                         epoch=epoch, history=len(self.run.history), best=dict(self.run.best))

    def publish(self, epoch: int) -> None:
        if epoch % self.run.opt.checkpoint_every == 0 or epoch == self.run.recipe.epochs:
            self._last()
        self._submit(self._metrics)
        if time.perf_counter() - self.curves_at >= self.CURVES_EVERY:
            self._curves()

    def close(self, interrupted: bool = False, abandon: bool = False) -> int:
        """Write what is not yet on disk and wait for it; the epoch last.pt then holds. After a failure, a write
        that fails too is not raised over the first error. A second Ctrl-C (`abandon`, or one arriving while
        this waits) abandons the writes: their temporary files go, and what is on disk stays as it was."""
        if self.closed or not self.run.world.is_main:
            return self.written
        self.closed = True
        failed_before = self.writer.failed  # a failure the run is already stopping for
        try:
            if abandon:
                raise KeyboardInterrupt
            if not self.latest.empty and self.latest.meta["epoch"] > self.written:
                self._last()
            if not self.best.empty:
                self._submit(self._best_file, reads=self.best)
            if self.run.history:
                self._submit(self._metrics)
                self._curves()
            self.writer.drain()
        except KeyboardInterrupt:
            remove_temporaries(self.run.out, RUN_FILES)
            self.written = self._on_disk()
        except (WriteFailed, TrainingError) as exc:
            if not interrupted:
                raise TrainingError(str(exc)) from None
            if not failed_before:  # the run stops for another reason: say this too
                err.print(f"note: {literal(exc)}")
        finally:
            self.writer.close()
        return self.written

    def _on_disk(self) -> int:
        try:
            return int(checkpoint.load(self.run.out / "last.pt")["epoch"])
        except (ValueError, KeyError, TypeError):
            return 0

    def _submit(self, job, reads: Optional[Snapshot] = None) -> None:
        try:
            self.writer.submit(job, reads=reads)
        except WriteFailed as exc:
            raise TrainingError(str(exc)) from None

    def _last(self) -> None:
        meta = self.latest.meta
        self.written = meta["epoch"]
        self._submit(lambda state: checkpoint.save_atomic(self._records(state, meta), self.run.out / "last.pt"),
                     reads=self.latest)

    def _best_file(self, state: dict) -> None:
        """best.pt: the best epoch's weights and the run's records up to it (no optimiser: it is for evaluating)."""
        epoch = self.best.meta["epoch"]
        meta = {"history": sum(1 for h in self.run.history if h["epoch"] <= epoch), "best": self.run.best}
        checkpoint.save_atomic(self._records({**state, "epoch": epoch}, meta), self.run.out / "best.pt")

    def _records(self, state: dict, meta: dict) -> dict:
        run = self.run
        return {**checkpoint.plain_numbers(state), "recipe": run.recipe.to_dict(), "data": run.identity,
                "history": [dict(h) for h in run.history[:meta["history"]]], "best": meta["best"],
                "classes": list(run.classes), "run": run.config}

    def _metrics(self) -> None:
        records = [self.run.config, *[dict(h) for h in self.run.history], *self.tail]
        write_jsonl(self.run.out / "metrics.jsonl", records)

    def _curves(self) -> None:
        self.curves_at = time.perf_counter()
        history = [dict(h) for h in self.run.history]
        self._submit(lambda: plot_curves(history, self.run.out / "curves.png",
                                         title=f"alexpipe {self.run.recipe.name} recipe"))


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
    test = evaluate(run.eval_net, run.loaders["test"], run.amp_dtype, r.tta_flip, len(run.classes), world,
                    pad_to=run.eval_shape)
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
               "compile_seconds": compile_seconds() - run.compile0, "capture_seconds": run.step.capture_seconds,
               "outside_seconds": float(sum(h.get("outside_seconds", 0.0) for h in run.history)),
               "classes": list(run.classes), "world_size": world.world_size, "rank_weight_digests": digests}
    run.books.tail = [summary]
    run.books.close()
    if world.is_main:
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
