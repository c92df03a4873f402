"""`alexpipe bench loaders | train | overhead | all`.

Importing this module is light (the harness, the report and torch come when
the command runs), so `--help` answers at once. Everything the user gave is
checked before the first measurement: the options (bench/options.py), that
`--out` can take the report (bench/output.py), the data (verified, as
training does), and that every backend can run on it (bench/preflight.py),
so a benchmark never runs for minutes only to lose its results. Ctrl-C and
SIGTERM stop it at once with one line, leaving no process and no temporary
folder behind (bench/stopping.py).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Optional

import typer

from alexpipe.choices import choice
from alexpipe.pipeline.augment import PCA_VARIANTS
from alexpipe.pipeline.loaders import BACKENDS
from alexpipe.terminal import console, fail, literal, note
from alexpipe.train.hardware import DEVICES

from .options import DTYPES, KINDS, Options, check_numbers, resolve_workers


def check_data(data: Path) -> None:
    """The train split must be a verified conversion (the same check training makes)."""
    from alexpipe.pipeline import DataError, verify_dataset

    try:
        verify_dataset(data, ["train"])
    except DataError as exc:
        fail(str(exc))


class _Progress:
    """What the benchmark is doing, for the status line and for the message of an interrupt."""

    def __init__(self, status: Any = None):
        self.status, self.doing, self.writing = status, "while checking the options and the data", False

    def __call__(self, message: str) -> None:
        self.doing = "while " + message if message.startswith(("building", "warming", "starting")) else "in " + message
        if self.status is not None:
            self.status.update(literal(message))


def _run(o: Options, kinds: list[str], progress: _Progress) -> tuple[dict, list[str]]:
    """Measure; returns the report and the one-line reasons of required configurations that failed after they
    were built (while warming up or measuring)."""
    from . import harness, preflight, report

    configs = [c for k in kinds for c in o.configs(k)]
    required, skipped = o.required(), {}
    for backend in dict.fromkeys(c.backend for c in configs if c.backend):
        why = preflight.cannot_run(backend, Path(o.data))
        if why:
            try:
                preflight.judge(backend, why, required, skipped)
            except preflight.Refused as exc:
                fail(str(exc))

    def on_built(outcomes: list[harness.Outcome]) -> None:
        for out in outcomes:
            if not out.built:
                preflight.judge(out.config.backend, out.reason or "could not be built", required, skipped)
        for backend, why in skipped.items():
            note(f"skipping {backend}: {why}")
        skipped.clear()

    for backend, why in skipped.items():
        note(f"skipping {backend}: {why}")
    gone = {b: why for b, why in skipped.items()}
    skipped.clear()
    todo = [c for c in configs if c.backend not in gone]
    with console(stderr=True).status("benchmarking") as status:
        progress.status = status
        try:
            ran = harness.run(todo, repeats=o.repeats, duration=o.duration, settle=o.settle, warmup_seconds=o.warmup,
                              on_event=progress, on_built=on_built)
        except preflight.Refused as exc:
            fail(str(exc))
        finally:
            progress.status = None
    by_config = iter(ran)
    outcomes = [harness.Outcome(c, status="unavailable", reason=gone[c.backend]) if c.backend in gone
                else next(by_config) for c in configs]
    flops = None
    if o.device == "cuda":
        from .flops import training_flops_per_image

        flops = training_flops_per_image()
    doc = report.document(harness.summarise(outcomes, flops_per_image=flops), o.settings(),
                          harness.arithmetic(outcomes, flops))
    late = [f"{out.config.id}: {out.reason}" for out in outcomes
            if out.built and out.status != "ok" and (out.config.backend in required or not out.config.backend)]
    return doc, late


def _show(doc: dict, out: Optional[Path]) -> None:
    from rich.table import Table

    from . import report
    from .output import write_report

    terminal = console()
    for title, header, rows in (("alexpipe bench", report.header(doc), report.rows(doc)),
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
        for p in write_report(doc, out):
            terminal.print(f"wrote {literal(p)}")


What = choice("What", KINDS)


def bench_cmd(
    what: What = typer.Argument(..., help="loaders: each backend alone; train: the full training step per backend "
                                          "plus the model-only ceiling; overhead: the host's cost of the training "
                                          "step (the network replaced by a near-zero-cost one), without and with "
                                          "torch.compile, in microseconds and aten operations per step; all: "
                                          "loaders and train, and the report files."),
    data: Path = typer.Option(Path("data/cifar10"), help="Folder written by `alexpipe convert`."),
    backends: Optional[str] = typer.Option(None, show_default=False,
                                           help=f"Comma-separated backends [default: {','.join(BACKENDS)}, skipping "
                                                "those that cannot run here, with a note]. A named backend that "
                                                "cannot run stops the command. torchvision (the baseline) is always "
                                                "added, except for overhead."),
    batch_sizes: str = typer.Option("128", help="Comma-separated batch sizes to sweep."),
    workers: Optional[int] = typer.Option(None, show_default=False,
                                          help="torchvision DataLoader workers; DALI / FFCV threads [default: the "
                                               "CPU cores this process may use; more are capped there]."),
    dtype: choice("Dtype", DTYPES) = typer.Option("bf16", help="Batch dtype (and autocast dtype for train)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Memory format [default: on for CUDA, off on CPU]."),
    both_layouts: bool = typer.Option(False, "--both-layouts",
                                      help="Measure every configuration in both memory formats (contiguous NCHW and "
                                           "channels_last), side by side in the same rounds; overrides "
                                           "--channels-last."),
    device: choice("Device", DEVICES) = typer.Option("auto", help="auto: a GPU when there is one."),
    compile: bool = typer.Option(False, "--compile/--no-compile",
                                 help="torch.compile the training step of train and the model-only ceiling, as "
                                      "`alexpipe train --compile` does (overhead always measures both)."),
    cuda_graphs: Optional[bool] = typer.Option(None, "--cuda-graphs/--no-cuda-graphs", show_default=False,
                                               help="Capture the training step in one CUDA graph, as `alexpipe "
                                                    "train` does [default: wherever train would: CUDA with bf16 or "
                                                    "fp32]."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Training augmentation on or off."),
    pca: choice("Pca", PCA_VARIANTS) = typer.Option("blog", help="PCA jitter variant with --augment."),
    duration: float = typer.Option(4.0, help="Seconds per timed window."),
    repeats: int = typer.Option(5, help="Timed rounds (every configuration once per round)."),
    warmup: float = typer.Option(3.0, help="Seconds of warm-up per configuration (compiling loaders also get "
                                           "their whole first epoch; a captured step, its capture)."),
    settle: int = typer.Option(10, help="Untimed batches before each window (drains prefetch queues)."),
    out: Optional[Path] = typer.Option(None, help="Folder for bench.json, bench.md and bench.png "
                                                  "[default for 'all': bench/results/<hostname>]."),
) -> None:
    """Measure images/s of every loader (and training step) beside the torchvision baseline."""
    from .stopping import Stopped, stop_on_signals

    progress = _Progress()
    with stop_on_signals():
        try:
            _bench(what.value, data, backends, batch_sizes, workers, dtype.value, channels_last, both_layouts,
                   device.value, compile, cuda_graphs, augment, pca.value, duration, repeats, warmup, settle, out,
                   progress)
        except Stopped as exc:
            written = "the report may be incomplete" if progress.writing else "no results were written"
            fail(f"interrupted ({exc.name}) {progress.doing}; {written}", code=128 + exc.signum)


def _bench(what: str, data: Path, backends: Optional[str], batch_sizes: str, workers: Optional[int], dtype: str,
           channels_last: Optional[bool], both_layouts: bool, device: str, compile: bool,
           cuda_graphs: Optional[bool], augment: bool, pca: str, duration: float, repeats: int, warmup: float,
           settle: int, out: Optional[Path], progress: _Progress) -> None:
    from .output import check_out

    check_numbers(duration, warmup, repeats, settle)
    if out is None and what == "all":
        out = Path("bench/results") / socket.gethostname()
    if out is not None:
        check_out(out)
    o = Options(what, data, backends, batch_sizes, device, channels_last, both_layouts, dtype, cuda_graphs,
                workers=resolve_workers(workers), augment=augment, pca=pca, compile=compile, duration=duration,
                repeats=repeats, warmup=warmup, settle=settle)
    check_data(Path(o.data))
    doc, late = _run(o, KINDS[what], progress)
    progress.doing, progress.writing = "while writing the report", True
    _show(doc, out)
    if late:
        fail(f"{len(late)} configuration(s) failed after they were built: {late[0]}")


def register(root: typer.Typer) -> None:
    root.command("bench")(bench_cmd)

