"""One training step: the same function for `alexpipe train` and `alexpipe bench`.

On a GPU this network's step costs a fraction of a millisecond, so the host
decides the speed (docs/design.md, "The GPU hot loop"). Nothing here reads a
value back from the device: the step hands back its batch's share of the
epoch's sums as a device tensor (summed by `metrics.EpochMeter`, the image
count a Python int), the fp16 gradient scaler and the fused SGD kernel skip an
overflowing step on the device (no `.item()`), and clipping scales by a device
tensor. There is one AMP path: a `GradScaler` that is simply disabled unless
the autocast dtype is float16.

On CUDA the whole step (forward, loss and sums, backward, clipping, the SGD
update) is captured once into a CUDA graph and replayed for every batch after
a few warm-up steps: one launch instead of ~150, whatever the host. The
captured step runs the very function an uncaptured one runs; what capture adds
is static input buffers (each batch is copied into them) and a learning rate
that lives on the device (the schedule writes it in place, so the graph never
needs capturing again).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .hardware import COMPILE_MODES
from .recipes import Recipe
from .schedule import Schedule, build_optimizer

Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # -> loss, [loss x n, correct]

WARMUP_STEPS = 3  # eager steps before capture: cuDNN picks its algorithms, torch.compile compiles, buffers exist


def make_forward(net: nn.Module, amp_dtype: Optional[torch.dtype], label_smoothing: float = 0.0,
                 cache_casts: bool = True) -> Forward:
    """(images, labels) -> (mean loss, [loss x n, number correct]): the part of the step `--compile` compiles whole.

    The second output is the batch's share of the epoch's sums, made here so
    that it is part of the compiled graph rather than a few more operations
    per step. `cache_casts=False` turns off autocast's cache of cast weights,
    which must not outlive a CUDA graph capture.
    """
    def forward(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None,
                            cache_enabled=cache_casts):
            logits = net(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        correct = (logits.argmax(1) == labels).sum()
        return loss, torch.stack((loss.detach().double() * labels.shape[0], correct.double()))

    return forward


def compiled(fn, mode: Optional[str]):
    """`fn` through torch.compile, with `mode` passed on ("default" or None: torch's default)."""
    if mode not in (None, *COMPILE_MODES):
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return torch.compile(fn, mode=None if mode in (None, "default") else mode)


def without_cuda_graphs(mode: Optional[str]) -> Optional[str]:
    """The torch.compile mode to use inside alexpipe's own capture: torch's CUDA graphs cannot nest in it."""
    return {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}.get(mode or "", mode)


class TrainStep:
    """forward + backward + (clip) + update + schedule, for one batch.

    Calling the step returns the batch's [loss x n, number correct] on the
    device, for `EpochMeter.add`; a captured step returns the same static
    tensor every time, so it is valid until the next call (the meter's add is
    queued on the device before the next step overwrites it).
    """

    def __init__(self, forward: Forward, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 scaler: torch.amp.GradScaler, clip: Optional[Callable[[], torch.Tensor]] = None, *,
                 compiled: bool = False, capture: bool = False):
        self.forward, self.optimizer, self.schedule, self.scaler, self.clip = forward, optimizer, schedule, scaler, clip
        self.compiled, self.capture = compiled, capture
        self._steps = 0  # steps run so far by this object (capture happens after WARMUP_STEPS)
        self.capture_seconds = 0.0  # host time spent recording the graph
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._side: Optional[torch.cuda.Stream] = None  # the warm-up steps' stream
        self._static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = ()  # type: ignore[assignment]

    @property
    def kind(self) -> str:
        """What runs per batch: eager | compiled | captured | compiled+captured (the last two on CUDA)."""
        return "+".join(k for k, on in (("compiled", self.compiled), ("captured", self.capture)) if on) or "eager"

    def _update(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Everything a step computes, gradients zeroed beforehand: the body of both the plain and the captured
        step."""
        loss, sums = self.forward(images, labels)
        self.scaler.scale(loss).backward()
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients; no-op when the scaler is disabled
            self.clip()
        self.scaler.step(self.optimizer)  # fused SGD: an overflowing fp16 step is skipped on the device
        self.scaler.update()
        return sums

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.capture:
            self.optimizer.zero_grad(set_to_none=True)
            sums = self._update(images, labels)
        elif self._graph is None and self._steps < WARMUP_STEPS:
            sums = self._warmup(images, labels)
        else:
            if self._graph is None:
                self._capture(images, labels)
            x, y, sums = self._static
            x.copy_(images, non_blocking=True)
            y.copy_(labels, non_blocking=True)
            self._graph.replay()
        self._steps += 1
        self.schedule.after_step()
        return sums

    def _warmup(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A real, uncaptured step on a side stream, as CUDA graph capture asks of the steps before it."""
        if self._side is None:
            self._side = torch.cuda.Stream()
        main, side = torch.cuda.current_stream(), self._side
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            sums = self._update(images, labels)
        main.wait_stream(side)
        sums.record_stream(main)
        return sums

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Record the step once into a CUDA graph over static buffers shaped like this batch.

        The gradients are set to None first so that the captured backward makes
        them in the graph's own memory (each replay overwrites them: no zeroing
        kernel), and the learning rate becomes a device tensor that the
        schedule fills in place. Capturing runs nothing: this batch's step is
        the first replay.
        """
        t0 = time.perf_counter()
        device = images.device
        for group in self.optimizer.param_groups:
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        x, y = torch.empty_like(images), torch.empty_like(labels)  # same shape, dtype and memory format
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sums = self._update(x, y)
        self._graph, self._static = graph, (x, y, sums)
        self.capture_seconds += time.perf_counter() - t0


def can_capture(net: nn.Module, amp_dtype: Optional[torch.dtype]) -> Optional[str]:
    """Why this step cannot be captured into a CUDA graph (None: it can)."""
    device = next(net.parameters()).device
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if amp_dtype == torch.float16:
        return "the fp16 gradient scaler decides on the host when to change its scale"
    if isinstance(net, nn.parallel.DistributedDataParallel):
        return "DistributedDataParallel's gradient buckets are not captured"
    return None


def build_step(net: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
               amp_dtype: Optional[torch.dtype], clip_grad_norm: Optional[float] = None,
               label_smoothing: float = 0.0, compile_mode: Optional[str] = None,
               compile: bool = False, capture: Optional[bool] = None) -> TrainStep:
    """The step users run.

    `compile` compiles forward + loss + accuracy as one graph (its backward
    follows) and the gradient clipping as another. `capture` records the whole
    step into one CUDA graph; None (the default) captures wherever
    `can_capture` allows, True insists (ValueError where it cannot), False
    never does.
    """
    why_not = can_capture(net, amp_dtype)
    if capture and why_not:
        raise ValueError(f"cannot capture the step in a CUDA graph: {why_not}")
    capture = why_not is None if capture is None else bool(capture)
    forward = make_forward(net, amp_dtype, label_smoothing, cache_casts=not capture)
    clip = None
    if clip_grad_norm:
        params = [p for p in net.parameters() if p.requires_grad]

        def clip() -> torch.Tensor:
            return torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)

    if compile:  # the mode (CUDA graphs, autotuning) is for the forward and backward; clipping compiles plainly
        forward = compiled(forward, without_cuda_graphs(compile_mode) if capture else compile_mode)
        clip = torch.compile(clip) if clip is not None else None
    device = next(net.parameters()).device
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return TrainStep(forward, optimizer, schedule, scaler, clip, compiled=compile, capture=capture)


def recipe_step(model: nn.Module, recipe: Recipe, steps_per_epoch: int, *, amp_dtype: Optional[torch.dtype],
                net: Optional[nn.Module] = None, compile: bool = False, compile_mode: Optional[str] = None,
                capture: Optional[bool] = None) -> TrainStep:
    """The step a recipe trains `model` with: its SGD, its lr schedule over `steps_per_epoch`, its clipping and
    label smoothing. `net` is what the step calls (default `model`; a run feeds it as the recipe says and wraps
    it for DDP). One assembly for `alexpipe train` and `alexpipe bench`, so the benchmark times what trains."""
    optimizer = build_optimizer(model, recipe)
    return build_step(net if net is not None else model, optimizer, Schedule(optimizer, recipe, steps_per_epoch),
                      amp_dtype=amp_dtype, clip_grad_norm=recipe.clip_grad_norm,
                      label_smoothing=recipe.label_smoothing, compile=compile, compile_mode=compile_mode,
                      capture=capture)


def new_generation(device: torch.device) -> None:
    """Tell torch.compile's CUDA graphs that a new iteration starts, before its batch is made.

    With `--compile-mode reduce-overhead` and no capture of alexpipe's own,
    the compiled step writes into static buffers that each replay reuses;
    marking the iteration start lets the batch and the step's outputs of one
    iteration live together. A counter increment otherwise (and nothing off
    CUDA).
    """
    if device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


__all__ = ["TrainStep", "build_step", "can_capture", "compiled", "make_forward", "new_generation", "recipe_step",
           "without_cuda_graphs"]
