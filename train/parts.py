"""What a training run is made of, stage by stage (train/run.py builds them in this order).

`RunOptions` is what the user asked; `Setup` where and how the run runs;
`Data` the verified data and its loaders; `Nets` the network and the two ways
the run calls it; `Progress` the one thing the epochs change. Each is built
once, by one stage, and handed to the stages after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import distributed
from .hardware import compile_seconds
from .recipes import Recipe


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


@dataclass(frozen=True)
class Setup:
    """Where and how the run runs, fixed once `start` has checked the options."""

    opt: RunOptions
    world: distributed.World
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool

    @property
    def recipe(self) -> Recipe:
        return self.opt.recipe

    @property
    def out(self) -> Path:
        return Path(self.opt.out)


@dataclass(frozen=True)
class Data:
    """The verified data: its classes, a loader per split (each rank its shard), and what a checkpoint records
    of it (the content digests of the bytes read, and the subset)."""

    classes: tuple[str, ...]
    train: Any
    val: Any  # None: the folder has no val split
    test: Any
    identity: dict[str, Any]


@dataclass(frozen=True)
class Nets:
    """The network, and the two ways the run calls it."""

    model: torch.nn.Module  # the bare network: its state is what checkpoints hold
    trained: torch.nn.Module  # model, fed as the recipe says and DDP-wrapped: what the step trains
    evaluated: torch.nn.Module  # trained, compiled for evaluation with --compile
    eval_shape: Optional[int]  # with --compile, every evaluation batch is padded to this many images


@dataclass
class Progress:
    """What the epochs change: the records so far, the best epoch, where to start, and the clocks."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    start_epoch: int = 1
    resumed: Optional[dict[str, Any]] = None  # from `resume`: the epoch it continues after, and what changed
    wall0: float = 0.0  # perf_counter() at which the run's wall clock (continued across resumes) started
    compile0: float = field(default_factory=compile_seconds)  # this process's compile time before the run


__all__ = ["Data", "Nets", "Progress", "RunOptions", "Setup"]
