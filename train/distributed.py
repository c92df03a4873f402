"""torchrun integration: one process per device, gradients all-reduced by DDP.

Single-process runs never create a process group: every helper here is a
no-op when the world has one member.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_from_env() -> World:
    """The torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPUs.

    The timeout bounds every collective, so a crashed rank ends the job with an
    error on the others instead of a hang.
    """
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout_s), **kwargs)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor over ranks (in place); identity for one process."""
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_int(value: int, world: World, device: torch.device) -> int:
    """A Python int summed over ranks (at the end of an epoch: a collective is a synchronisation anyway)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def max_int(value: int, world: World, device: torch.device) -> int:
    """The largest of every rank's `value`, on every rank (e.g. 'a signal arrived on some rank: stop here')."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


# How a collective says that another process of the job is gone: gloo's and NCCL's errors are plain
# RuntimeErrors (or torch's DistError), whose text names the transport.
_PEER_LOST = re.compile(r"gloo|nccl|Connection (closed|reset)|Broken pipe|timed? ?out|ProcessGroup|c10d", re.I)


def lost_peer(exc: BaseException, timeout_s: float) -> Optional[str]:
    """One line for a collective that failed because another process of this torchrun job died, stopped or
    hung (None for any other error): the surviving ranks say that, not a 55-line traceback of gloo's.

    Decided by the job (WORLD_SIZE above 1) and the error's type or text: by the time the error reaches the
    command line, the process group has been shut down.
    """
    if world_from_env().world_size <= 1:
        return None
    text = str(exc)
    if not (isinstance(exc, getattr(dist, "DistError", ())) or _PEER_LOST.search(text)):
        return None
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    first = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first)  # the C++ source location
    detail = re.split(r"(?<=[a-z0-9)\]])\. ", first, maxsplit=1)[0].rstrip(".")
    rank = os.environ.get("RANK", "?")
    if re.search(r"timed? ?out", text, re.I):
        return (f"rank {rank}: waited --dist-timeout {timeout_s:g} s for the other processes of this job, in vain "
                f"({detail}): one of them stopped or hung; this one stops too")
    return (f"rank {rank}: another process of this job has gone ({detail}); this one stops too (the other's "
            "output says why)")
