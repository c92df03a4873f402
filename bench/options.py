"""`alexpipe bench`'s options, checked and resolved once, before anything is measured.

Every refusal is one line naming the flag. What the options resolve to is
what the report records: the absolute data folder (the workers run from
another working directory), the worker count actually used, and the step's
compile and capture settings.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

from alexpipe.pipeline.loaders import BACKENDS
from alexpipe.pipeline.loaders.workers import check_workers, usable_cores
from alexpipe.terminal import fail, note

KINDS = {"loaders": ["loader"], "train": ["train"], "overhead": ["overhead"], "all": ["loader", "train"]}
DTYPES = ("bf16", "fp16", "fp32")
BASELINE = "torchvision"


def _parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(s.strip()) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"{what}: expected a comma-separated list, got {text!r}")
    if not items:
        fail(f"{what}: empty list")
    return items


def check_numbers(duration: float, warmup: float, repeats: int, settle: int) -> None:
    """One line naming the flag for each number out of range; `nan` and `inf` are out of every range (a
    window of `inf` seconds never ends, and `nan` passes every comparison's negation)."""
    if not (math.isfinite(duration) and duration > 0):
        fail(f"--duration must be a positive, finite number of seconds, got {duration}")
    if not (math.isfinite(warmup) and warmup >= 0):
        fail(f"--warmup must be a finite number of seconds, 0 or more, got {warmup}")
    if repeats < 1:
        fail(f"--repeats must be at least 1, got {repeats}")
    if settle < 0:
        fail(f"--settle must not be negative, got {settle}")


def resolve_workers(workers: Optional[int]) -> int:
    """--workers: default, the cores this process may use (what a user of a DataLoader would configure);
    more is capped there with a note, a negative count refused (pipeline/loaders/workers.py)."""
    if workers is None:
        return usable_cores()
    try:
        workers, capped = check_workers(workers)
    except ValueError as exc:
        fail(str(exc))
    if capped:
        note(capped)
    return workers


class Options:
    """The shared options, checked and resolved once, before anything is measured."""

    def __init__(self, what: str, data: Path, backends: Optional[str], batch_sizes: str, device: str,
                 channels_last: Optional[bool], both_layouts: bool, dtype: str, cuda_graphs: Optional[bool],
                 **rest):
        self.what, self.data = what, os.path.abspath(data)  # what the workers read, from any directory
        self.named = _parse_list(backends, "--backends") if backends is not None else []
        self.backends = list(self.named or BACKENDS)
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown:
            fail(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        if BASELINE not in self.backends and what != "overhead":  # the baseline is always measured in the same run
            self.backends.insert(0, BASELINE)  # (overhead compares each backend, uncompiled, with itself compiled)
        self.backends.sort(key=lambda b: b != BASELINE)  # baseline first in every round
        self.batch_sizes = _parse_list(batch_sizes, "--batch-sizes", int)
        if min(self.batch_sizes) < 1:
            fail(f"--batch-sizes must be positive, got {batch_sizes!r}")
        from alexpipe.train.hardware import resolve_device

        try:
            self.device = resolve_device(device).type
        except ValueError as exc:
            fail(str(exc))
        self.dtype = dtype
        if cuda_graphs and what != "loaders":
            if self.device != "cuda":
                fail("--cuda-graphs: CUDA graphs need a CUDA device (--device cuda)")
            if dtype == "fp16":
                fail("--cuda-graphs: the fp16 gradient scaler decides on the host when to change its scale, so an "
                     "fp16 step is not captured; use --dtype bf16 or fp32")
        self.cuda_graphs = cuda_graphs
        self.channels_last = (self.device == "cuda") if channels_last is None else channels_last
        self.layouts = [False, True] if both_layouts else [self.channels_last]
        for name, value in rest.items():
            setattr(self, name, value)

    def required(self) -> dict[str, str]:
        """The backends whose failure stops the command (backend -> how a message names it): those named with
        --backends, and the baseline where ratios are taken against it."""
        need = {b: f"--backends {b}" for b in self.named}
        if self.what != "overhead":
            need.setdefault(BASELINE, f"{BASELINE} (the baseline every ratio is taken against)")
        return need

    def configs(self, kind: str) -> list:
        from . import harness

        common = dict(workers=self.workers, dtype=self.dtype, device=self.device, augment=self.augment, pca=self.pca,
                      data=self.data, capture=self.cuda_graphs)
        out = []
        compiles = (False, True) if kind == "overhead" else (self.compile,)
        for cl in self.layouts:
            for b in self.batch_sizes:
                out += [harness.Config(kind=kind, backend=be, batch_size=b, channels_last=cl, compile=co, **common)
                        for be in self.backends for co in compiles]
                if kind == "train":
                    out.append(harness.Config(kind="model", batch_size=b, channels_last=cl, compile=self.compile,
                                              **common))
        return out

    def settings(self) -> dict:
        return {"repeats": self.repeats, "duration": self.duration, "settle": self.settle,
                "warmup_seconds": self.warmup, "device": self.device, "dtype": self.dtype,
                "channels_last": self.channels_last, "both_layouts": len(self.layouts) > 1,
                "augment": self.augment, "pca": self.pca, "compile": self.compile, "cuda_graphs": self.cuda_graphs,
                "workers": self.workers, "usable_cores": usable_cores(), "batch_sizes": self.batch_sizes,
                "backends": self.backends, "data": self.data,
                "command": " ".join(shlex.quote(a) for a in ["alexpipe", *sys.argv[1:]])}
