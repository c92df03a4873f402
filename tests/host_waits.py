"""Counting what makes the host wait for the device, for the hot-loop tests (test_step.py, test_cuda.py)."""

from __future__ import annotations

import sys
from pathlib import Path
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import alexpipe

aten = torch.ops.aten
# operations that make the host wait for a GPU: a scalar read, and results whose size depends on the data
_WAITING_OPS = {aten._local_scalar_dense, aten.nonzero, aten.bincount, aten.masked_select, aten._unique2,
                aten.unique_consecutive, aten.unique_dim, aten.repeat_interleave}


def blocking_transfer(func, args: tuple, kwargs: dict) -> bool:
    """Whether an operation copies between devices without non_blocking (the host waits for it on CUDA):
    `.to(device)`, `.cuda()`, `.cpu()`, `torch.tensor(..., device=...)`, `dst.copy_(src)`.

    On a CPU-only machine no such copy can exist (every device is the CPU), so
    this catches what it must only where a GPU is: tests/test_cuda.py reuses it.
    """
    if func is aten._to_copy.default:
        target = kwargs.get("device")
        return target is not None and torch.device(target).type != args[0].device.type \
            and not kwargs.get("non_blocking", False)
    if func is aten.copy_.default:
        non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        return args[0].device.type != args[1].device.type and not non_blocking
    return False


class HostWaits(TorchDispatchMode):
    """Records, while active, every operation that would make the host wait for the device.

    At the dispatcher: scalar reads, data-dependent shapes, copies between
    devices that are not non-blocking. At the Python level, for what never
    reaches the dispatcher on a CPU: `.tolist()`, `.cpu()`, `.numpy()`,
    `.item()` (on a GPU tensor each one waits for the GPU), and, from
    alexpipe's own code, `torch.tensor(..., device=...)` and `.to(device)`
    without `non_blocking=True` (each one a blocking copy where the device is
    a GPU, a no-op here).
    """

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self.active = False
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.active and (func.overloadpacket in _WAITING_OPS or blocking_transfer(func, args, kwargs)):
            self.seen.append(str(func))
        return func(*args, **kwargs)

    def _spy(self, owner, name: str, waits) -> None:
        original = getattr(owner, name)
        self._saved[owner, name] = original

        def spy(*args, **kwargs):
            if self.active and waits(args, kwargs):
                self.seen.append(f"{owner.__name__}.{name}")
            return original(*args, **kwargs)

        setattr(owner, name, spy)

    def __enter__(self):
        for name in ("tolist", "cpu", "numpy", "item"):
            self._spy(torch.Tensor, name, lambda args, kwargs: True)
        # alexpipe's own code asking for a transfer that would block on CUDA, visible on a CPU too: a tensor
        # made from Python data straight on a device, or a .to(device) without non_blocking=True
        self._spy(torch.Tensor, "to", lambda args, kwargs: _ours() and _names_device(args[1:], kwargs)
                  and not kwargs.get("non_blocking"))
        for name in ("tensor", "as_tensor"):
            self._spy(torch, name, lambda args, kwargs: _ours() and kwargs.get("device") is not None)
        return super().__enter__()

    def __exit__(self, *exc):
        for (owner, name), original in self._saved.items():
            setattr(owner, name, original)
        return super().__exit__(*exc)


_OURS = tuple(str(Path(alexpipe.__file__).resolve().parents[1] / d) for d in ("pipeline", "train", "bench"))


def _ours() -> bool:
    """Whether the call being spied on comes from alexpipe's own code (not torch's internals)."""
    return sys._getframe(3).f_code.co_filename.startswith(_OURS)


def _names_device(args: tuple, kwargs: dict) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)


class Dispatches(TorchDispatchMode):
    """Counts the operations that reach torch's dispatcher while active (what a GPU would launch, and more)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class SteadyState:
    """Wraps a loader: counting is on from the second batch until the last one is asked for, so the window
    holds whole steady-state steps (loader fetch, step, meter, checks) and none of an epoch's edges.

    With `cuda_errors`, torch's CUDA sync debug mode is "error" inside that window: any synchronising CUDA
    call raises there and then. `start`: the first batch counted (a captured step records its graph, a
    synchronising setup, after its warm-up steps).
    """

    def __init__(self, loader, counter: HostWaits, cuda_errors: bool = False, start: int = 1):
        self.loader, self.counter, self.cfg = loader, counter, loader.cfg
        self.cuda_errors, self.start = cuda_errors, start

    def __len__(self) -> int:
        return len(self.loader)

    def _window(self, on: bool) -> None:
        self.counter.active = on
        if self.cuda_errors:
            torch.cuda.set_sync_debug_mode("error" if on else "default")

    def __iter__(self):
        n = len(self.loader)
        try:
            for k, batch in enumerate(self.loader):
                self._window(self.start <= k < n - 1)
                yield batch
        finally:
            self._window(False)
