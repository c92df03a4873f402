"""`alexpipe train` and `alexpipe evaluate`."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from alexpipe.pipeline import DataError

from .recipes import RECIPES, Recipe, get_recipe

console = Console(stderr=True)
out_console = Console()

_RECIPE_HELP = "Overrides the recipe's value."


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _overrides(**given) -> dict:
    """The recipe fields the user actually passed (None = not given)."""
    out = {k: v for k, v in given.items() if v is not None}
    if "step_epochs" in out:
        try:
            out["step_epochs"] = tuple(int(s) for s in str(out["step_epochs"]).split(",") if s.strip())
        except ValueError:
            _fail(f"--step-epochs takes comma-separated epoch numbers, got {given['step_epochs']!r}")
    if "clip_grad_norm" in out and out["clip_grad_norm"] <= 0:
        out["clip_grad_norm"] = None  # 0 turns clipping off
    return out


def train_cmd(
    data: Path = typer.Option(Path("data/cifar10"), help="Folder written by `alexpipe convert`."),
    out: Path = typer.Option(Path("runs/blog"), help="Run folder: last.pt, best.pt, metrics.jsonl, curves.png, "
                                                     "config.json, summary.json."),
    recipe: Optional[str] = typer.Option(None, help=f"Named recipe: {', '.join(RECIPES)} [default: blog, or the "
                                                    "run's own with --resume]."),
    epochs: Optional[int] = typer.Option(None, help=_RECIPE_HELP + " Epochs to train (blog 49, paper 90)."),
    batch_size: Optional[int] = typer.Option(None, help=_RECIPE_HELP + " Global batch size (per process x "
                                                                       "processes)."),
    lr: Optional[float] = typer.Option(None, help=_RECIPE_HELP + " Peak learning rate."),
    momentum: Optional[float] = typer.Option(None, help=_RECIPE_HELP + " SGD momentum."),
    nesterov: Optional[bool] = typer.Option(None, "--nesterov/--no-nesterov", help=_RECIPE_HELP),
    weight_decay: Optional[float] = typer.Option(None, help=_RECIPE_HELP + " L2 weight decay."),
    schedule: Optional[str] = typer.Option(None, help=_RECIPE_HELP + " step | plateau | onecycle."),
    step_epochs: Optional[str] = typer.Option(None, help=_RECIPE_HELP + " For 'step': comma-separated epochs "
                                                                        "after which lr is multiplied by gamma."),
    gamma: Optional[float] = typer.Option(None, help=_RECIPE_HELP + " lr factor of 'step' and 'plateau'."),
    patience: Optional[int] = typer.Option(None, help=_RECIPE_HELP + " Epochs without val-loss improvement "
                                                                     "before 'plateau' cuts lr."),
    warmup_epochs: Optional[float] = typer.Option(None, help=_RECIPE_HELP + " Linear warm-up of 'onecycle'."),
    clip_grad_norm: Optional[float] = typer.Option(None, help=_RECIPE_HELP + " Gradient max-norm; 0 = off."),
    init: Optional[str] = typer.Option(None, help=_RECIPE_HELP + " Weight init: default | kaiming | paper."),
    dropout: Optional[float] = typer.Option(None, help=_RECIPE_HELP + " Dropout of the FC layers."),
    label_smoothing: Optional[float] = typer.Option(None, help=_RECIPE_HELP),
    pca: Optional[str] = typer.Option(None, help=_RECIPE_HELP + " PCA colour jitter: blog | paper | off."),
    inputs: Optional[str] = typer.Option(None, help=_RECIPE_HELP + " What the network is fed: normalised "
                                                                   "(x / 255 - mean) / std, or pixels (x - mean "
                                                                   "on the 0..255 scale, the paper's)."),
    pca_sigma: Optional[float] = typer.Option(None, help=_RECIPE_HELP + " Std of the PCA coefficients alpha."),
    loader: Optional[str] = typer.Option(None, help=_RECIPE_HELP + " resident | dali | ffcv | torchvision."),
    tta_flip: Optional[bool] = typer.Option(None, "--tta-flip/--no-tta-flip",
                                            help=_RECIPE_HELP + " Evaluate on image + mirror."),
    seed: Optional[int] = typer.Option(None, help=_RECIPE_HELP + " Seeds weights, shuffles and augmentation."),
    model: Optional[str] = typer.Option(None, help=_RECIPE_HELP + " Network: alexnet_cifar."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    amp: str = typer.Option("auto", help="Mixed precision: auto (bf16 where the hardware has it, else fp16 on "
                                         "CUDA, off on CPU) | bf16 | fp16 (with a gradient scaler) | off."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Memory format [default: on for CUDA, off on CPU]."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the hot path: the model with its loss "
                                                          "(forward and backward) and, with the resident loader, "
                                                          "the augmentation."),
    compile_mode: str = typer.Option("default", help="torch.compile mode with --compile: default | reduce-overhead "
                                                     "(CUDA graphs) | max-autotune | max-autotune-no-cudagraphs."),
    subset: Optional[int] = typer.Option(None, help="Train on a class-balanced subset of N train images."),
    eval_subset: Optional[int] = typer.Option(None, help="Validate/test on class-balanced subsets of N images."),
    workers: int = typer.Option(2, help="Worker processes (torchvision) or threads (DALI, FFCV)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    force: bool = typer.Option(False, "--force", help="Start over in a non-empty --out, or resume despite a "
                                                      "changed recipe/dataset (the optimiser and lr schedule "
                                                      "then continue from their saved state)."),
    log_every: int = typer.Option(20, help="Steps between progress updates (each one syncs the device)."),
    scale_lr: bool = typer.Option(False, "--scale-lr", help="Linear scaling rule: multiply lr by batch size / the "
                                                            "recipe's batch size (off: a recipe means the same "
                                                            "thing on 1 or N processes at the same global batch)."),
    dist_timeout: float = typer.Option(600.0, help="Seconds a distributed collective may wait before the job "
                                                   "fails (a crashed or stuck rank ends the run, not hangs it)."),
    index_log: Optional[Path] = typer.Option(None, hidden=True, help="Test hook: append the train positions "
                                                                     "each rank sees, as JSON lines."),
) -> None:
    """Train AlexNet on converted CIFAR-10 (default: the write-up's 49-epoch recipe)."""
    from .loop import RunOptions, TrainingError, fit

    changes = _overrides(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, schedule=schedule, step_epochs=step_epochs, gamma=gamma,
                         patience=patience, warmup_epochs=warmup_epochs, clip_grad_norm=clip_grad_norm, init=init,
                         dropout=dropout, label_smoothing=label_smoothing, pca=pca, inputs=inputs, pca_sigma=pca_sigma,
                         loader=loader, tta_flip=tta_flip, seed=seed, model=model)
    try:
        if resume:
            base, saved = _saved_run(out)
            if recipe is not None and recipe != base.name and not force:
                _fail(f"{out} was trained with recipe {base.name!r}, not {recipe!r} (pass --force to switch)")
            subset = saved.get("subset") if subset is None else subset
            eval_subset = saved.get("eval_subset") if eval_subset is None else eval_subset
            data = Path(saved["data"]) if data == Path("data/cifar10") and saved.get("data") else data
        else:
            base = get_recipe(recipe or "blog")
        r = base.replace(**changes)
        if scale_lr:
            r = r.replace(lr=r.lr * r.batch_size / base.batch_size)
    except (ValueError, TypeError) as exc:
        _fail(str(exc))
    opts = RunOptions(data=data, out=out, recipe=r, device=device, amp=amp, channels_last=channels_last,
                      compile=compile, compile_mode=compile_mode, subset=subset, eval_subset=eval_subset, num_workers=workers, resume=resume,
                      force=force, log_every=max(1, log_every), index_log=index_log,
                      dist_timeout=dist_timeout,
                      command=" ".join(shlex.quote(a) for a in ["alexpipe", *sys.argv[1:]]))
    try:
        fit(opts)
    except (TrainingError, DataError, ValueError) as exc:
        _fail(str(exc), 2 if type(exc).__name__ == "NonFiniteLoss" else 1)


def _saved_run(out: Path) -> tuple[Recipe, dict]:
    cfg = out / "config.json"
    if not (out / "last.pt").exists() or not cfg.exists():
        raise ValueError(f"{out} holds no run to resume (no last.pt); start one without --resume")
    saved = json.loads(cfg.read_text())
    return Recipe.from_dict(saved["recipe"]), saved


def evaluate_cmd(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A best.pt or last.pt of a run."),
    data: Path = typer.Option(Path("data/cifar10"), help="Folder written by `alexpipe convert`."),
    split: str = typer.Option("test", help="train | val | test (un-augmented)."),
    loader: str = typer.Option("resident", help="resident | dali | ffcv | torchvision."),
    batch_size: int = typer.Option(500, help="Images per forward pass."),
    tta_flip: Optional[bool] = typer.Option(None, "--tta-flip/--no-tta-flip",
                                            help="Average with the mirrored image [default: the recipe's]."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    amp: str = typer.Option("auto", help="auto | bf16 | fp16 | off."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Top-1/top-5, per-class accuracy and the confusion matrix of a checkpoint."""
    import torch

    from alexpipe.model import build_model
    from alexpipe.pipeline import load_split, make_loader

    from . import checkpoint as ckpt_mod
    from .distributed import World
    from .inputs import feed
    from .loop import TrainingError, evaluate, resolve_amp, resolve_device

    try:
        ckpt = ckpt_mod.load(checkpoint_path)
        r = Recipe.from_dict(ckpt["recipe"])
        dev = resolve_device(device, World())
        amp_dtype = resolve_amp(amp, dev)
        classes = list(ckpt.get("classes") or load_split(data, split).meta.classes)
        net = build_model(r.model, num_classes=len(classes), dropout=r.dropout).to(dev)
        net.load_state_dict(ckpt["model"])
        net = feed(net, r.inputs, load_split(data, split).meta.stats.std)
        ld = make_loader(data, split, loader, device=dev, batch_size=batch_size, augment=False,
                         dtype=amp_dtype or torch.float32, channels_last=dev.type == "cuda")
        res = evaluate(net, ld, amp_dtype, r.tta_flip if tta_flip is None else tta_flip, len(classes))
    except (TrainingError, DataError, ValueError) as exc:
        _fail(str(exc))
    conf = res["confusion"]
    per_class = [row[i] / max(1, sum(row)) for i, row in enumerate(conf)]
    t = Table(title=f"{checkpoint_path} on {split} ({res['images']:,} images, epoch {ckpt['epoch']})")
    t.add_column("true \\ predicted")
    for c in classes:
        t.add_column(c[:5], justify="right")
    t.add_column("accuracy", justify="right")
    for c, row, acc in zip(classes, conf, per_class):
        t.add_row(c, *map(str, row), f"{100 * acc:.1f}%")
    out_console.print(t)
    out_console.print(f"top-1 {100 * res['top1']:.2f}%   top-5 {100 * res['top5']:.2f}%   loss {res['loss']:.4f}")
    if json_out:
        json_out.write_text(json.dumps({"checkpoint": str(checkpoint_path), "split": split, **res,
                                        "per_class_acc": dict(zip(classes, per_class)), "classes": classes},
                                       indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
