"""One training step: the same function for `alexpipe train` and `alexpipe bench`.

On a GPU this network's step costs a fraction of a millisecond, so the host
decides the speed (docs/design.md, "The GPU hot loop"). Nothing here reads a
value back from the device: the step hands back its batch's share of the
epoch's sums as a device tensor (summed by `metrics.EpochMeter`, the image
count a Python int), the fp16 gradient scaler and the fused SGD kernel skip an
overflowing step on the device (no `.item()`), and clipping scales by a device
tensor. There is one AMP path: a `GradScaler` that is simply disabled unless
the autocast dtype is float16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .hardware import COMPILE_MODES
from .schedule import Schedule

Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # -> loss, [loss x n, correct]


def make_forward(net: nn.Module, amp_dtype: Optional[torch.dtype], label_smoothing: float = 0.0) -> Forward:
    """(images, labels) -> (mean loss, [loss x n, number correct]): the part of the step `--compile` compiles whole.

    The second output is the batch's share of the epoch's sums, made here so
    that it is part of the compiled graph rather than a few more operations
    per step.
    """
    def forward(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
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


@dataclass
class TrainStep:
    """forward + backward + (clip) + update + schedule, for one batch.

    `forward` is `make_forward`'s function and `clip` clips the gradients to
    a norm, each compiled or not. Calling the step returns the batch's
    [loss x n, number correct], still on the device, for `EpochMeter.add`.
    """

    forward: Forward
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    clip: Optional[Callable[[], torch.Tensor]] = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss, sums = self.forward(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients; no-op when the scaler is disabled
            self.clip()
        self.scaler.step(self.optimizer)  # fused SGD: an overflowing fp16 step is skipped on the device
        self.scaler.update()
        self.schedule.after_step()
        return sums


def build_step(net: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
               amp_dtype: Optional[torch.dtype], clip_grad_norm: Optional[float] = None,
               label_smoothing: float = 0.0, compile_mode: Optional[str] = None,
               compile: bool = False) -> TrainStep:
    """The step users run. `compile` compiles forward + loss + accuracy as one graph (its backward follows),
    and the gradient clipping as another."""
    device = next(net.parameters()).device
    forward = make_forward(net, amp_dtype, label_smoothing)
    clip = None
    if clip_grad_norm:
        params = [p for p in net.parameters() if p.requires_grad]

        def clip() -> torch.Tensor:
            return torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)

    if compile:  # the mode (CUDA graphs, autotuning) is for the forward and backward; clipping compiles plainly
        forward = compiled(forward, compile_mode)
        clip = torch.compile(clip) if clip is not None else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return TrainStep(forward, optimizer, schedule, scaler, clip)


def new_generation(device: torch.device) -> None:
    """Tell torch.compile's CUDA graphs that a new iteration starts, before its batch is made.

    With `--compile-mode reduce-overhead` the compiled augmentation and the
    compiled step write into static buffers that each replay reuses; marking
    the iteration start lets the batch and the step's outputs of one iteration
    live together. A counter increment otherwise (and nothing off CUDA).
    """
    if device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


__all__ = ["TrainStep", "build_step", "compiled", "make_forward", "new_generation"]
