"""`alexpipe bench loaders | train | all`."""

from __future__ import annotations

import shlex
import socket
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import harness, report

console = Console(stderr=True)
out_console = Console()

ALL_BACKENDS = ["torchvision", "resident", "dali", "ffcv"]


def _parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(s.strip()) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what}: expected a comma-separated list, got {text!r}") from None
    if not items:
        raise typer.BadParameter(f"{what}: empty list")
    return items


class Options:
    """The shared options, parsed once."""

    def __init__(self, data, backends, batch_sizes, workers, dtype, channels_last, device, augment, pca, duration,
                 repeats, warmup, settle, both_layouts=False, baseline=True):
        import torch

        if not (Path(data) / "train.safetensors").exists():
            console.print(f"[bold red]error:[/] {data} holds no converted train split: run `alexpipe convert` first")
            raise typer.Exit(1)
        self.data = str(data)
        self.backends = _parse_list(backends, "--backends")
        unknown = set(self.backends) - set(ALL_BACKENDS)
        if unknown:
            raise typer.BadParameter(f"--backends: unknown {', '.join(sorted(unknown))}; choose from "
                                     f"{', '.join(ALL_BACKENDS)}")
        if "torchvision" not in self.backends and baseline:  # the baseline is always measured in the same run
            self.backends.insert(0, "torchvision")
        self.backends.sort(key=lambda b: b != "torchvision")  # baseline first in every round
        self.batch_sizes = _parse_list(batch_sizes, "--batch-sizes", int)
        if dtype not in ("bf16", "fp16", "fp32"):
            raise typer.BadParameter("--dtype must be bf16, fp16 or fp32")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            console.print("[bold red]error:[/] --device cuda asked for, but no CUDA GPU is available")
            raise typer.Exit(1)
        self.device = device
        self.channels_last = (device == "cuda") if channels_last is None else channels_last
        self.layouts = [False, True] if both_layouts else [self.channels_last]
        self.workers, self.dtype, self.augment, self.pca = workers, dtype, augment, pca
        self.duration, self.repeats, self.warmup, self.settle = duration, repeats, warmup, settle

    def configs(self, kind: str) -> list[harness.Config]:
        common = dict(workers=self.workers, dtype=self.dtype, device=self.device, augment=self.augment, pca=self.pca,
                      data=self.data)
        out = []
        compiles = (False, True) if kind == "overhead" else (False,)
        for cl in self.layouts:
            for b in self.batch_sizes:
                out += [harness.Config(kind=kind, backend=be, batch_size=b, channels_last=cl, compile=co, **common)
                        for be in self.backends for co in compiles]
                if kind == "train":
                    out.append(harness.Config(kind="model", batch_size=b, channels_last=cl, **common))
        return out

    def settings(self) -> dict:
        return {"repeats": self.repeats, "duration": self.duration, "settle": self.settle,
                "warmup_seconds": self.warmup, "device": self.device, "dtype": self.dtype,
                "channels_last": self.channels_last, "both_layouts": len(self.layouts) > 1,
                "augment": self.augment, "pca": self.pca,
                "workers": self.workers, "batch_sizes": self.batch_sizes, "backends": self.backends,
                "command": " ".join(shlex.quote(a) for a in ["alexpipe", *sys.argv[1:]])}


def _run(o: Options, kinds: list[str]) -> dict:
    configs = [c for k in kinds for c in o.configs(k)]
    with console.status("benchmarking") as status:
        outcomes = harness.run(configs, repeats=o.repeats, duration=o.duration, settle=o.settle,
                               warmup_seconds=o.warmup, on_event=lambda m: status.update(m))
    return report.document(harness.summarise(outcomes), o.settings())


def _show(doc: dict, out: Optional[Path]) -> None:
    for title, header, rows in (("alexpipe bench", report.HEADER, report.rows(doc)),
                                ("alexpipe bench: host cost per step", report.OVERHEAD_HEADER,
                                 report.overhead_rows(doc))):
        if not rows:
            continue
        t = Table(title=title)
        for h in header:
            t.add_column(h)
        for r in rows:
            t.add_row(*r)
        out_console.print(t)
    if out is not None:
        for p in report.write_all(doc, out):
            out_console.print(f"wrote {p}")


KINDS = {"loaders": ["loader"], "train": ["train"], "overhead": ["overhead"], "all": ["loader", "train"]}


def bench_cmd(
    what: str = typer.Argument(..., metavar="loaders|train|overhead|all",
                               help="loaders: each backend alone; train: the full training step per backend plus "
                                    "the model-only ceiling; overhead: the host's cost of the training step (the "
                                    "network replaced by a near-zero-cost one), eager and compiled, in "
                                    "microseconds and aten operations per step; all: loaders and train, and the "
                                    "report files."),
    data: Path = typer.Option(Path("data/cifar10"), help="Folder written by `alexpipe convert`."),
    backends: str = typer.Option(",".join(ALL_BACKENDS), help="Comma-separated backends; torchvision (the "
                                                              "baseline) is always added."),
    batch_sizes: str = typer.Option("128", help="Comma-separated batch sizes to sweep."),
    workers: int = typer.Option(2, help="torchvision DataLoader workers; DALI / FFCV threads."),
    dtype: str = typer.Option("bf16", help="Batch dtype (and autocast dtype for train): bf16 | fp16 | fp32."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Memory format [default: on for CUDA, off on CPU]."),
    both_layouts: bool = typer.Option(False, "--both-layouts",
                                      help="Measure every configuration in both memory formats (contiguous NCHW and "
                                           "channels_last), side by side in the same rounds; overrides "
                                           "--channels-last."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (auto picks a GPU when one is there)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Training augmentation on or off."),
    pca: str = typer.Option("blog", help="PCA jitter variant with --augment: blog | paper | off."),
    duration: float = typer.Option(4.0, help="Seconds per timed window."),
    repeats: int = typer.Option(5, help="Timed rounds (every configuration once per round)."),
    warmup: float = typer.Option(3.0, help="Seconds of warm-up per configuration (compiling loaders also get "
                                           "their whole first epoch)."),
    settle: int = typer.Option(10, help="Untimed batches before each window (drains prefetch queues)."),
    out: Optional[Path] = typer.Option(None, help="Folder for bench.json, bench.md and bench.png "
                                                  "[default for 'all': bench/results/<hostname>]."),
) -> None:
    """Measure images/s of every loader (and training step) beside the torchvision baseline."""
    if what not in KINDS:
        console.print(f"[bold red]error:[/] unknown benchmark {what!r}; choose loaders, train, overhead or all")
        raise typer.Exit(1)
    if pca not in ("blog", "paper", "off"):
        raise typer.BadParameter("--pca must be blog, paper or off")
    # overhead compares each backend with itself (eager against compiled): no torchvision baseline needed
    o = Options(data, backends, batch_sizes, workers, dtype, channels_last, device, augment, pca, duration,
                repeats, warmup, settle, both_layouts, baseline=what != "overhead")
    if out is None and what == "all":
        out = Path("bench/results") / socket.gethostname()
    _show(_run(o, KINDS[what]), out)


def register(root: typer.Typer) -> None:
    root.command("bench")(bench_cmd)
