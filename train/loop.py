"""The two loops of a run: one epoch of training, and one evaluation (train/run.py calls them).

Neither waits for the device inside its loop (docs/design.md, "The GPU hot
loop"): the training loop reads its sums back only for a progress line, every
`log_every` steps, and evaluation once, at its end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from . import distributed
from .errors import NonFiniteLoss, TrainingError
from .interrupt import GracefulInterrupt, Interrupted
from .metrics import EpochMeter, EvalMeter
from .progress import EpochProgress
from .step import TrainStep, new_generation


@dataclass
class EpochContext:
    """What every training epoch shares: the step, the world, and how to report and stop."""

    step: TrainStep
    world: distributed.World
    device: torch.device
    log_every: int = 20
    stop: Optional[GracefulInterrupt] = None
    progress: Optional[EpochProgress] = None


def train_epoch(ctx: EpochContext, net: torch.nn.Module, loader, epoch: int) -> dict[str, float]:
    """One pass over `loader`: the epoch's training metrics, summed over every rank."""
    net.train()
    meter = EpochMeter(ctx.device)
    steps = len(loader)  # asked once: the loader's epoch order is fixed for the epoch
    if ctx.progress:
        ctx.progress.begin(epoch, steps)
    wait, t_start = 0.0, time.perf_counter()
    logged = (0, t_start)
    batches = iter(loader)
    for step in range(1, steps + 1):
        new_generation(ctx.device)
        t0 = time.perf_counter()
        images, labels = next(batches)
        wait += time.perf_counter() - t0
        meter.add(ctx.step(images, labels), labels.shape[0])
        if ctx.stop is not None and not ctx.world.distributed:
            ctx.stop.check()  # a Ctrl-C stops between steps, never inside a checkpoint write
        if step % ctx.log_every == 0 or step == steps:
            logged = _progress(ctx, meter, epoch, step, logged)
    if ctx.progress:
        ctx.progress.end()
    distributed.all_reduce_sum(meter.sums, ctx.world)
    loss_sum, correct, _ = meter.read()
    seconds = time.perf_counter() - t_start  # after the read: the device's queued steps are part of the epoch
    count = distributed.sum_int(meter.count, ctx.world, ctx.device)
    if count == 0:
        raise TrainingError("the training loader yielded no batch: the subset is smaller than one batch")
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"the loss became non-finite in epoch {epoch}")
    return {"train_loss": loss_sum / count, "train_acc": correct / count, "train_images": int(count),
            "train_seconds": seconds, "images_per_s": count / seconds, "data_wait_fraction": wait / seconds}


def _progress(ctx: EpochContext, meter: EpochMeter, epoch: int, step: int,
              logged: tuple[int, float]) -> tuple[int, float]:
    """The progress line: the one place a training epoch reads values back from the device."""
    if ctx.stop is not None and ctx.world.distributed:
        signum = distributed.max_int(ctx.stop.requested or 0, ctx.world, ctx.device)
        if signum:  # every rank stops at this same step
            raise Interrupted(signum)
    loss_sum, correct, count = meter.read()
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"the loss became non-finite in epoch {epoch} (step {step})")
    now = time.perf_counter()
    if ctx.progress:
        rate = (count - logged[0]) / max(now - logged[1], 1e-9) * ctx.world.world_size
        ctx.progress.update(step, f"{rate:7.0f} img/s  loss {loss_sum / count:.4f}  "
                                  f"acc {100 * correct / count:5.2f}%  lr {ctx.step.schedule.lr:.2e}")
    return count, now


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader, amp_dtype: Optional[torch.dtype], tta_flip: bool, num_classes: int,
             world: distributed.World = distributed.World(), pad_to: Optional[int] = None) -> dict[str, Any]:
    """Loss, top-1/top-5 and the confusion matrix over every image of the loader's split (all ranks).

    `pad_to`: a smaller batch (the split's last) is padded with blank images to this many, and their logits
    dropped, so that a compiled network sees one shape and compiles once (the network has no batch-wise layer:
    padding changes no other image's logits).
    """
    net.eval()
    meter = EvalMeter(num_classes, loader.cfg.device)
    batches = iter(loader)
    while True:
        new_generation(loader.cfg.device)
        batch = next(batches, None)
        if batch is None:
            break
        images, labels = batch
        n = labels.shape[0]
        if pad_to is not None and n < pad_to:
            images = _padded(images, pad_to)
        with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(images).float()
            if tta_flip:
                logits = 0.5 * (logits + net(images.flip(3)).float())
        meter.add(logits[:n], labels)
    distributed.all_reduce_sum(meter.sums, world)
    distributed.all_reduce_sum(meter.confusion, world)
    n = distributed.sum_int(meter.count, world, meter.sums.device)
    loss_sum, top1, top5 = meter.sums.tolist()
    return {"loss": loss_sum / max(n, 1), "top1": top1 / max(n, 1), "top5": top5 / max(n, 1), "images": n,
            "confusion": meter.confusion.cpu().tolist()}


def _padded(images: torch.Tensor, size: int) -> torch.Tensor:
    """`images` followed by blank ones up to `size`, in the same memory format (another one would recompile)."""
    fmt = torch.channels_last if images.dim() == 4 and not images.is_contiguous() \
        and images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = images.new_zeros((size, *images.shape[1:])).contiguous(memory_format=fmt)
    out[:images.shape[0]] = images
    return out


__all__ = ["EpochContext", "evaluate", "train_epoch"]
