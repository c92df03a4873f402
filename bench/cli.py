"""`alexpipe bench loaders | train | overhead | all`.

Importing this module is light (the harness, the report and torch come when
the command runs), so `--help` answers at once. Everything the user gave is
checked before the first measurement: the data (verified, as training does),
the options, and that `--out` can be written, so a benchmark never runs for
minutes only to lose its results.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from alexpipe.pipeline.augment import PCA_VARIANTS
from alexpipe.pipeline.loaders import BACKENDS
from alexpipe.terminal import console, fail, literal
from alexpipe.train.hardware import DEVICES

KINDS = {"loaders": ["loader"], "train": ["train"], "overhead": ["overhead"], "all": ["loader", "train"]}
DTYPES = ("bf16", "fp16", "fp32")
BASELINE = "torchvision"


def _choice(name: str, values) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)


def _parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(s.strip()) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"{what}: expected a comma-separated list, got {text!r}")
    if not items:
        fail(f"{what}: empty list")
    return items


class Options:
    """The shared options, checked and resolved once, before anything is measured."""

    def __init__(self, what: str, data: Path, backends: str, batch_sizes: str, device: str,
                 channels_last: Optional[bool], both_layouts: bool, **rest):
        self.what, self.data = what, str(data)
        self.backends = _parse_list(backends, "--backends")
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown:
            fail(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        if BASELINE not in self.backends and what != "overhead":  # the baseline is always measured in the same run
            self.backends.insert(0, BASELINE)  # (overhead compares each backend, eager, with itself compiled)
        self.backends.sort(key=lambda b: b != BASELINE)  # baseline first in every round
        self.batch_sizes = _parse_list(batch_sizes, "--batch-sizes", int)
        if min(self.batch_sizes) < 1:
            fail(f"--batch-sizes must be positive, got {batch_sizes!r}")
        from alexpipe.train.hardware import resolve_device

        try:
            self.device = resolve_device(device).type
        except ValueError as exc:
            fail(str(exc))
        self.channels_last = (self.device == "cuda") if channels_last is None else channels_last
        self.layouts = [False, True] if both_layouts else [self.channels_last]
        for name, value in rest.items():
            setattr(self, name, value)

    def configs(self, kind: str) -> list:
        from . import harness

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


def check_out(out: Path) -> None:
    """--out must be a folder that exists or can be made, and be writable, before minutes of measuring."""
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a folder")
    place = out
    while not place.exists():
        place = place.parent
    if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
        fail(f"--out {out}: {place} is not a folder this user can write to")


def check_data(data: Path) -> None:
    """The train split must be a verified conversion (the same check training makes)."""
    from alexpipe.pipeline import DataError, verify_dataset

    try:
        verify_dataset(data, ["train"])
    except DataError as exc:
        fail(str(exc))


def _run(o: Options, kinds: list[str]) -> dict:
    from . import harness, report

    configs = [c for k in kinds for c in o.configs(k)]
    with console(stderr=True).status("benchmarking") as status:
        outcomes = harness.run(configs, repeats=o.repeats, duration=o.duration, settle=o.settle,
                               warmup_seconds=o.warmup, on_event=lambda m: status.update(literal(m)))
    return report.document(harness.summarise(outcomes), o.settings())


def _show(doc: dict, out: Optional[Path]) -> None:
    from rich.table import Table

    from . import report

    terminal = console()
    for title, header, rows in (("alexpipe bench", report.HEADER, report.rows(doc)),
                                ("alexpipe bench: host cost per step", report.OVERHEAD_HEADER,
                                 report.overhead_rows(doc))):
        if not rows:
            continue
        t = Table(title=title)
        for h in header:
            t.add_column(h)
        for r in rows:
            t.add_row(*map(literal, r))
        terminal.print(t)
    if out is not None:
        for p in report.write_all(doc, out):
            terminal.print(f"wrote {literal(p)}")


def _data_failures(doc: dict) -> list[str]:
    """The configurations that could not run because of the data (as opposed to a missing library)."""
    return [f"{r['id']}: {r['reason']}" for r in doc["results"]
            if r["status"] != "ok" and (r["reason"] or "").startswith("DataError")]


What = _choice("What", KINDS)


def bench_cmd(
    what: What = typer.Argument(..., help="loaders: each backend alone; train: the full training step per backend "
                                          "plus the model-only ceiling; overhead: the host's cost of the training "
                                          "step (the network replaced by a near-zero-cost one), eager and "
                                          "compiled, in microseconds and aten operations per step; all: loaders and "
                                          "train, and the report files."),
    data: Path = typer.Option(Path("data/cifar10"), help="Folder written by `alexpipe convert`."),
    backends: str = typer.Option(",".join(BACKENDS), help="Comma-separated backends; torchvision (the baseline) is "
                                                          "always added, except for overhead."),
    batch_sizes: str = typer.Option("128", help="Comma-separated batch sizes to sweep."),
    workers: int = typer.Option(2, help="torchvision DataLoader workers; DALI / FFCV threads."),
    dtype: _choice("Dtype", DTYPES) = typer.Option("bf16", help="Batch dtype (and autocast dtype for train)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Memory format [default: on for CUDA, off on CPU]."),
    both_layouts: bool = typer.Option(False, "--both-layouts",
                                      help="Measure every configuration in both memory formats (contiguous NCHW and "
                                           "channels_last), side by side in the same rounds; overrides "
                                           "--channels-last."),
    device: _choice("Device", DEVICES) = typer.Option("auto", help="auto: a GPU when there is one."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Training augmentation on or off."),
    pca: _choice("Pca", PCA_VARIANTS) = typer.Option("blog", help="PCA jitter variant with --augment."),
    duration: float = typer.Option(4.0, help="Seconds per timed window."),
    repeats: int = typer.Option(5, help="Timed rounds (every configuration once per round)."),
    warmup: float = typer.Option(3.0, help="Seconds of warm-up per configuration (compiling loaders also get "
                                           "their whole first epoch)."),
    settle: int = typer.Option(10, help="Untimed batches before each window (drains prefetch queues)."),
    out: Optional[Path] = typer.Option(None, help="Folder for bench.json, bench.md and bench.png "
                                                  "[default for 'all': bench/results/<hostname>]."),
) -> None:
    """Measure images/s of every loader (and training step) beside the torchvision baseline."""
    what = what.value
    if out is None and what == "all":
        out = Path("bench/results") / socket.gethostname()
    if out is not None:
        check_out(out)
    if duration <= 0 or repeats < 1 or warmup < 0 or settle < 0 or workers < 0:
        fail("--duration must be positive, --repeats at least 1, and --warmup, --settle and --workers not negative")
    o = Options(what, data, backends, batch_sizes, device.value, channels_last, both_layouts, workers=workers,
                dtype=dtype.value, augment=augment, pca=pca.value, duration=duration, repeats=repeats,
                warmup=warmup, settle=settle)
    check_data(data)
    doc = _run(o, KINDS[what])
    _show(doc, out)
    failures = _data_failures(doc)
    if failures:
        fail(f"{len(failures)} configuration(s) could not read the data: {failures[0]}")


def register(root: typer.Typer) -> None:
    root.command("bench")(bench_cmd)
