"""`alexpipe train` and `alexpipe evaluate`.

Importing this module is light: the choices come from modules that do not
import torch, and the commands import the rest when they run, so `--help`
answers at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from alexpipe.atomic import WriteError, reason
from alexpipe.choices import choice, plain
from alexpipe.help import Grouped
from alexpipe.paths import GROWS, check_fits
from alexpipe.pipeline.constants import SPLITS
from alexpipe.pipeline.loaders import BACKENDS
from alexpipe.terminal import console, fail, literal, note

from .hardware import AMP_MODES, COMPILE_MODES, DEVICES
from .recipes import RECIPES, Recipe, check_model, get_recipe

DEFAULT_DATA = Path("data/cifar10")
_RECIPE_HELP = "Overrides the recipe's value."


def _overrides(**given) -> dict:
    """The recipe fields the user actually passed (None = not given)."""
    out = {k: v for k, v in given.items() if v is not None}
    if "step_epochs" in out:
        try:
            out["step_epochs"] = tuple(int(s) for s in str(out["step_epochs"]).split(",") if s.strip())
        except ValueError:
            fail(f"--step-epochs takes comma-separated epoch numbers, got {given['step_epochs']!r}")
    if "clip_grad_norm" in out and math.isfinite(out["clip_grad_norm"]) and out["clip_grad_norm"] <= 0:
        out["clip_grad_norm"] = None  # 0 turns clipping off (nan and -inf are refused by the recipe's validation)
    return out


# The options of `train`: the recipe's fields (made from train/recipes.py by `_recipe_options`), and these,
# where and how to run it. Each in its --help panel.
RECIPE, FOLDERS, RUNTIME = "Recipe", "Data and run folder", "Runtime"
Data = Annotated[Optional[Path], typer.Option(help="Folder written by `alexpipe convert` [default: data/cifar10, "
                                                   "or the run's own with --resume].", rich_help_panel=FOLDERS)]
Out = Annotated[Path, typer.Option(help="Run folder: last.pt, best.pt, metrics.jsonl, curves.png, config.json, "
                                        "summary.json.", rich_help_panel=FOLDERS)]
RecipeName = Annotated[Optional[choice("RecipeName", RECIPES)], typer.Option(
    "--recipe", help="Named recipe [default: blog, or the run's own with --resume].", rich_help_panel=RECIPE)]
Device = Annotated[choice("Device", DEVICES), typer.Option(help="auto: a GPU when there is one.",
                                                           rich_help_panel=RUNTIME)]
Amp = Annotated[Optional[choice("Amp", AMP_MODES)], typer.Option(help="Mixed precision: auto (bf16 where the "
                                  "hardware does it natively, else fp16 on CUDA, off on other CPUs) | bf16 | fp16 "
                                  "(with a gradient scaler) | off [default: auto, or the run's own with --resume].",
                                  show_default=False, rich_help_panel=RUNTIME)]
ChannelsLast = Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last",
                                                      help="Memory format [default: on for CUDA, off on CPU].",
                                                      rich_help_panel=RUNTIME)]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the hot path: the model with its loss "
                                                         "(forward and backward), the gradient clipping, and the "
                                                         "evaluation.", rich_help_panel=RUNTIME)]
CompileMode = Annotated[choice("CompileMode", COMPILE_MODES), typer.Option(
                                          help="torch.compile mode with --compile (reduce-overhead: torch's CUDA "
                                               "graphs, which --cuda-graphs replaces with one graph per step).",
                                          rich_help_panel=RUNTIME)]
CudaGraphs = Annotated[Optional[bool], typer.Option("--cuda-graphs/--no-cuda-graphs",
                                                    help="Capture the whole training step (forward, backward, "
                                                         "clipping, update) in one CUDA graph, replayed every batch "
                                                         "[default: on for CUDA with bf16 or fp32 in one process].",
                                                    rich_help_panel=RUNTIME)]
CheckpointEvery = Annotated[int, typer.Option(help="Write last.pt every N epochs, in the background (also after "
                                                   "the last epoch, and on Ctrl-C or a failure: the last finished "
                                                   "epoch). A kill -9 loses at most N - 1 epochs.",
                                              rich_help_panel=FOLDERS)]
Subset = Annotated[Optional[int], typer.Option(help="Train on a class-balanced subset of N train images.",
                                               rich_help_panel=FOLDERS)]
EvalSubset = Annotated[Optional[int], typer.Option(help="Validate/test on class-balanced subsets of N images.",
                                                   rich_help_panel=FOLDERS)]
Workers = Annotated[Optional[int], typer.Option(help="Worker processes (torchvision) or threads (DALI, FFCV), at "
                                                      "most the usable CPU cores [default: 2].",
                                                rich_help_panel=RUNTIME)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.",
                                      rich_help_panel=FOLDERS)]
Force = Annotated[bool, typer.Option("--force", help="Start over in a non-empty --out, or resume with changed "
                                                     "settings: they take effect from the resumed epoch on, and "
                                                     "config.json records where.", rich_help_panel=FOLDERS)]
LogEvery = Annotated[int, typer.Option(help="Steps between progress updates (each one syncs the device).",
                                       rich_help_panel=RUNTIME)]
ScaleLr = Annotated[bool, typer.Option("--scale-lr", help="Linear scaling rule: multiply lr by batch size / the "
                                                          "recipe's batch size (off: a recipe means the same thing "
                                                          "on 1 or N processes at the same global batch).",
                                       rich_help_panel=RECIPE)]
DistTimeout = Annotated[float, typer.Option(help="Seconds a distributed collective may wait before the job fails "
                                                 "(a crashed or stuck rank ends the run, not hangs it).",
                                            rich_help_panel=RUNTIME)]
_RUN_OPTIONS = (("data", Data, None), ("out", Out, Path("runs/blog")), ("recipe", RecipeName, None),
                ("scale_lr", ScaleLr, False), ("device", Device, "auto"), ("amp", Amp, None),
                ("channels_last", ChannelsLast, None), ("compile", Compile, False),
                ("compile_mode", CompileMode, "default"), ("cuda_graphs", CudaGraphs, None),
                ("checkpoint_every", CheckpointEvery, 5), ("subset", Subset, None), ("eval_subset", EvalSubset, None),
                ("workers", Workers, None), ("resume", Resume, False), ("force", Force, False),
                ("log_every", LogEvery, 20), ("dist_timeout", DistTimeout, 600.0))


def _recipe_options() -> list[inspect.Parameter]:
    """An option per recipe field that has a help text (train/recipes.py `_option`): its name, type, choices and
    help come from the field, so that adding a field to Recipe adds its option. None means "the recipe's"."""
    params = []
    for f in dataclasses.fields(Recipe):
        if "help" not in f.metadata:
            continue
        choices, dash, default = f.metadata["choices"], f.name.replace("_", "-"), f.default
        decls: tuple[str, ...] = (f"--{dash}/--no-{dash}",) if isinstance(default, bool) else ()
        if isinstance(default, bool):
            kind: Any = bool
        elif choices and f.metadata["checked"]:
            kind = choice(f.name, choices)
        elif isinstance(default, (int, float)):
            kind = type(default)
        else:  # text: the network (refused by `validate` in a fuller sentence), the comma-separated step epochs
            kind = str
        shown = {"metavar": "<" + "|".join(choices) + ">"} if choices and not f.metadata["checked"] else {}
        option = typer.Option(*decls, help=f"{_RECIPE_HELP} {f.metadata['help']}".strip(), rich_help_panel=RECIPE,
                              **shown)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[kind], option]))
    return params


def _signature() -> inspect.Signature:
    """train's options: the recipe's after --recipe, the others around them."""
    ours = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, annotation, default in _RUN_OPTIONS]
    return inspect.Signature(ours[:3] + _recipe_options() + ours[3:])


def train_cmd(**options: Any) -> None:
    """Train AlexNet on converted CIFAR-10 (default: the write-up's 49-epoch recipe)."""
    given = {k: plain(v) for k, v in options.items()}
    data, out, recipe, device, amp = (given[k] for k in ("data", "out", "recipe", "device", "amp"))
    subset, eval_subset, resume, force = (given[k] for k in ("subset", "eval_subset", "resume", "force"))
    _check_out(out)
    if data is not None:
        check_fits("--data", data, grows=GROWS)
    changes = _overrides(**{p.name: given[p.name] for p in _recipe_options()})
    data_from = None
    try:
        if resume:
            base, saved = _saved_run(out)
            if recipe is not None and recipe != base.name:
                if not force:
                    fail(f"{out} was trained with recipe {base.name!r}, not {recipe!r} (pass --force to switch to "
                         "it from the resumed epoch on)")
                base = get_recipe(recipe)
            # a run recorded before 0 was refused took it to mean the whole split, as None does
            subset = (saved.get("subset") or None) if subset is None else subset
            eval_subset = (saved.get("eval_subset") or None) if eval_subset is None else eval_subset
            amp = _SAVED_AMP.get(saved.get("amp"), "auto") if amp is None else amp
            if data is None and saved.get("data"):
                data, data_from = Path(saved["data"]), str(out / "config.json")
        else:
            base = get_recipe(recipe or "blog")
        amp = amp or "auto"
        r = base.replace(**changes)
        if given["scale_lr"]:
            r = r.replace(lr=r.lr * r.batch_size / base.batch_size)
    except (ValueError, TypeError) as exc:
        fail(str(exc))
    _check_run_options(subset=subset, eval_subset=eval_subset, dist_timeout=given["dist_timeout"])
    _run(data if data is not None else DEFAULT_DATA, out, r, dict(
        device=device, amp=amp, channels_last=given["channels_last"], compile=given["compile"],
        compile_mode=given["compile_mode"], cuda_graphs=given["cuda_graphs"],
        checkpoint_every=given["checkpoint_every"], subset=subset, eval_subset=eval_subset, data_from=data_from,
        num_workers=_workers(given["workers"]), resume=resume, force=force, log_every=max(1, given["log_every"]),
        dist_timeout=given["dist_timeout"], command=" ".join(shlex.quote(a) for a in ["alexpipe", *sys.argv[1:]])))


train_cmd.__signature__ = _signature()  # typer reads the options from it


MAX_DIST_TIMEOUT = 7 * 24 * 3600  # a week: longer is no timeout at all, and far larger overflows a timedelta


def _check_run_options(subset: Optional[int], eval_subset: Optional[int], dist_timeout: float) -> None:
    """The options that are not recipe fields, each refused in one line naming its flag."""
    for flag, n in (("--subset", subset), ("--eval-subset", eval_subset)):
        if n is not None and n <= 0:  # 0 would otherwise read as "not given": the whole split
            fail(f"{flag} must be a positive number of images (a multiple of the number of classes), got {n}")
    if not (math.isfinite(dist_timeout) and 0 < dist_timeout <= MAX_DIST_TIMEOUT):
        fail(f"--dist-timeout must be a number of seconds above 0 and at most {MAX_DIST_TIMEOUT:,} (a week), "
             f"got {dist_timeout}")


def _workers(given: Optional[int]) -> int:
    """The loader's worker count: the one given, capped to the usable cores (saying so, once per job), or 2."""
    from alexpipe.pipeline.loaders.workers import check_workers, usable_cores

    if given is None:
        return min(2, usable_cores())
    try:
        workers, capped = check_workers(given)
    except ValueError as exc:
        fail(str(exc))
    if capped and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        note(capped)
    return workers


def _run(data: Path, out: Path, recipe: Recipe, options: dict) -> None:
    """fit() with every failure a user can cause as one line (exit 2 for a diverged loss, else 1)."""
    from alexpipe.pipeline import DataError

    from .errors import TrainingError
    from .run import RunOptions, fit

    try:
        fit(RunOptions(data=data, out=out, recipe=recipe, **options))
    except (TrainingError, DataError, ValueError, WriteError) as exc:
        fail(str(exc), getattr(exc, "exit_code", 1))
    except OSError as exc:
        _fail_on_file(exc)
    except RuntimeError as exc:  # under torchrun: a collective failed because another rank died or stopped
        from .distributed import lost_peer

        line = lost_peer(exc, options["dist_timeout"])
        if line is None:
            raise
        fail(line)


def _fail_on_file(exc: OSError) -> None:
    """An OSError naming a file (the machine refused it: a name too long, a folder gone) as one line; one that
    names none is not the user's to act on, and goes on up."""
    if exc.filename is None:
        raise exc
    fail(f"{exc.filename}: {reason(exc)}")


def _check_out(out: Path) -> None:
    """--out must be a path the file system takes, and not a symbolic link to nowhere (which the run could
    neither create nor write into)."""
    check_fits("--out", out, grows=GROWS)
    if out.is_symlink() and not out.exists():
        fail(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist: create that folder "
             "first, or choose another --out")


_SAVED_AMP = {"bfloat16": "bf16", "float16": "fp16", "off": "off"}  # config.json's record -> --amp


def _saved_run(out: Path) -> tuple[Recipe, dict]:
    """The recipe and options of the run in `out`, from its config.json; ValueError, one line, naming the file."""
    cfg = out / "config.json"
    if not (out / "last.pt").exists() or not cfg.exists():
        raise ValueError(f"{out} holds no run to resume (no last.pt); start one without --resume")
    try:
        saved = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{cfg}: not valid JSON ({exc})") from None
    try:
        if not isinstance(saved, dict) or "recipe" not in saved:
            raise ValueError("no recipe in it")
        return Recipe.from_dict(saved["recipe"]), saved
    except ValueError as exc:
        raise ValueError(f"{cfg}: not the config.json of an alexpipe run ({exc})") from None


def evaluate_cmd(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A best.pt or last.pt of a run."),
    data: Path = typer.Option(DEFAULT_DATA, help="Folder written by `alexpipe convert`."),
    split: choice("Split", SPLITS) = typer.Option("test", help="The split to evaluate (un-augmented)."),
    loader: choice("Backend", BACKENDS) = typer.Option("resident", help="Input pipeline."),
    batch_size: int = typer.Option(500, help="Images per forward pass."),
    tta_flip: Optional[bool] = typer.Option(None, "--tta-flip/--no-tta-flip",
                                            help="Average with the mirrored image [default: the recipe's]."),
    device: choice("Device", DEVICES) = typer.Option("auto", help="auto: a GPU when there is one."),
    amp: choice("Amp", AMP_MODES) = typer.Option("auto", help="Mixed precision, as for train."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Top-1/top-5, per-class accuracy and the confusion matrix of a checkpoint."""
    from alexpipe.pipeline import DataError

    from .errors import TrainingError

    split, loader, device, amp = (plain(v) for v in (split, loader, device, amp))
    if batch_size < 1:
        fail(f"--batch-size must be positive, got {batch_size}")
    check_fits("CHECKPOINT", checkpoint_path)
    check_fits("--data", data, grows=GROWS)
    if json_out is not None:  # before an evaluation that may take a minute, not after it
        check_fits("--json", json_out, grows=GROWS)
        _check_writable(json_out)
    try:
        res, classes, epoch = _evaluate(checkpoint_path, data, split, loader, batch_size, tta_flip, device, amp)
    except (TrainingError, DataError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        _fail_on_file(exc)
    conf = res["confusion"]
    per_class = [row[i] / max(1, sum(row)) for i, row in enumerate(conf)]
    out = console()
    out.print(f"{literal(checkpoint_path)} (epoch {epoch}) on {split}: {res['images']:,} images")
    out.print(confusion_table(classes, conf, per_class))
    out.print(f"top-1 {100 * res['top1']:.2f}%   top-5 {100 * res['top5']:.2f}%   loss {res['loss']:.4f}")
    if json_out:
        from .metrics import write_json

        try:
            write_json(json_out, {"checkpoint": str(checkpoint_path), "split": split, **res,
                                  "per_class_acc": dict(zip(classes, per_class)), "classes": classes})
        except WriteError as exc:
            fail(f"--json: {exc}")


def _evaluate(checkpoint_path: Path, data: Path, split: str, loader: str, batch_size: int,
              tta_flip: Optional[bool], device: str, amp: str) -> tuple[dict, list[str], int]:
    import torch

    from alexpipe.model import build_model
    from alexpipe.pipeline import load_split, make_loader, verify_dataset

    from . import checkpoint
    from .hardware import amp_note, resolve_amp, resolve_device
    from .inputs import feed
    from .loop import evaluate

    ckpt = checkpoint.load(checkpoint_path)
    try:
        r = Recipe.from_dict(ckpt["recipe"])
        check_model(r.model)
    except ValueError as exc:
        raise ValueError(f"{checkpoint_path}: {exc}") from None
    dev = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    if amp_note(amp_dtype, dev):
        note(amp_note(amp_dtype, dev))
    verify_dataset(data, [split])  # labels in range, content as recorded: before a number is reported
    meta = load_split(data, split).meta
    other = _other_data(ckpt, data, split, meta.content_sha256)
    if other:
        note(f"{checkpoint_path} {other}")
    classes = list(ckpt["classes"])
    if classes != list(meta.classes):
        raise ValueError(f"{checkpoint_path} was trained on the classes {classes}, {data} holds {list(meta.classes)}")
    net = build_model(r.model, num_classes=len(classes), dropout=r.dropout).to(dev)
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # missing, unexpected or differently shaped weights
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{checkpoint_path}: its weights do not fit the {r.model} network ({first})") from None
    net = feed(net, r.inputs, meta.stats.std)
    ld = make_loader(data, split, loader, device=dev, batch_size=batch_size, augmented=False,
                     dtype=amp_dtype or torch.float32, channels_last=dev.type == "cuda")
    return evaluate(net, ld, amp_dtype, r.tta_flip if tta_flip is None else tta_flip, len(classes)), classes, \
        ckpt["epoch"]


def _other_data(ckpt: dict, data: Path, split: str, digest: str) -> Optional[str]:
    """Why the figure about to be reported may not mean what it seems (None: the checkpoint's own data).

    Another conversion of CIFAR-10 draws another val split out of the train
    set, so its val (or test) images may be ones this run trained on; and a
    split other than the one the run validated on is not its validation
    figure. The checkpoint records the content digests of the run's data.
    """
    from alexpipe.pipeline import load_split

    recorded = ckpt.get("data") or {}
    train = recorded.get("train")
    if train and split != "train" and load_split(data, "train").meta.content_sha256 != train:
        return (f"was trained on another conversion than {data} (its train split differs): its {split} images "
                "may include ones the run trained on")
    if recorded.get(split) and recorded[split] != digest:
        return f"was not trained with this {split} split: {data}'s differs from the run's"
    return None


def _check_writable(path: Path) -> None:
    """`path` can be written as a file: fail with one line now if not."""
    if path.is_dir():
        fail(f"--json {path} is a folder, not a file")
    parent = path.parent
    if not parent.is_dir():
        fail(f"--json {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        fail(f"--json {path}: the folder {parent} is not writable")


def confusion_table(classes: list[str], conf: list[list[int]], per_class: list[float]):
    """Counts[true, predicted] with the classes numbered across the top and named down the side, and each
    class's accuracy: readable in 80 columns (ten 5-digit columns, no borders)."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False, padding=(0, 0, 0, 1), show_edge=False)
    t.add_column("true \\ pred", no_wrap=True)
    for i in range(len(classes)):
        t.add_column(str(i), justify="right", no_wrap=True)
    t.add_column("acc", justify="right", no_wrap=True)
    for i, (name, row, acc) in enumerate(zip(classes, conf, per_class)):
        t.add_row(literal(f"{i} {name[:12]}"), *map(str, row), f"{100 * acc:.1f}%")
    return t


def register(app: typer.Typer) -> None:
    app.command("train", cls=Grouped)(train_cmd)
    app.command("evaluate")(evaluate_cmd)
