"""Where a training step's time goes: `python -m alexpipe.bench.step_profile`, eager, compiled and captured.

Images per second says how fast a step is; this says why. Each form of the
step `alexpipe train` can run (built by train.step.build_step with the
recipe's settings: eager, compiled, captured in a CUDA graph, compiled and
captured) runs on one synthetic batch already on the device, past its
compilation and capture, and then:

- 20 (`--steps`) steps are timed without the profiler: the step's wall time
  (device synchronised at the end) and the host's time per step (the time the
  Python call takes to return, which is what the host spends issuing it);
- the same number of steps run under torch.profiler: the device's kernels
  (count per step, the top ones by device time), the launches the host makes
  per step (CUDA runtime launch calls; a captured step launches one graph),
  the aten operations it dispatches, and the share of the step's wall time
  in which the device is busy (the union of its kernels' intervals).

Each form's result is one JSON line appended to `--out` as soon as it is
measured, so a run cut short keeps what it finished. On a CPU the captured
forms say why they cannot run and the kernel figures are absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

VARIANTS = {"eager": (False, False), "captured": (False, True), "compiled+captured": (True, True),
            "compiled": (True, False)}  # name -> (compile, capture), cheapest to compile first
# CUDA runtime and driver calls that launch work (names may carry a version suffix: cudaLaunchKernelExC_v11060)
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuGraphLaunch", "cudaLaunchCooperativeKernel")
TOP = 5


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Microseconds covered by at least one of the intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _summarise_trace(events: Any, steps: int, step_us: float, gpu: bool) -> dict[str, Any]:
    """Per-step figures from a profiler's events (torch.autograd.profiler_util.FunctionEvent); the device's
    only on a GPU (`gpu`)."""
    from torch.autograd import DeviceType

    device = [e for e in events if e.device_type != DeviceType.CPU]
    host = [e for e in events if e.device_type == DeviceType.CPU]
    by_name: dict[str, float] = {}
    for e in device:
        by_name[e.name] = by_name.get(e.name, 0.0) + e.time_range.elapsed_us()
    device_us = sum(by_name.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:TOP]
    busy = _busy_us([(e.time_range.start, e.time_range.end) for e in device]) / steps
    return {
        "aten_ops_per_step": sum(1 for e in host if e.name.startswith("aten::")) / steps,
        "launches_per_step": sum(1 for e in host if e.name.startswith(LAUNCHES)) / steps if gpu else None,
        "kernels_per_step": len(device) / steps if gpu else None,
        "device_us_per_step": busy if gpu else None,
        "gpu_busy": min(1.0, busy / step_us) if gpu and step_us > 0 else None,
        "top_kernels": [{"name": name, "us_per_step": us / steps, "share": us / device_us} for name, us in top]
                       if gpu and device_us > 0 else [],
    }


def profile_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build the step in this form and measure it; {"variant", "status": "unavailable", "reason"} where this
    form cannot run here."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from alexpipe.model import build_model
    from alexpipe.train.hardware import resolve_amp
    from alexpipe.train.inputs import feed
    from alexpipe.train.recipes import get_recipe
    from alexpipe.train.schedule import Schedule, build_optimizer
    from alexpipe.train.step import WARMUP_STEPS, build_step, can_capture

    compile_, capture = VARIANTS[name]
    device = torch.device(args.device)
    amp = resolve_amp(args.amp, device)
    r = get_recipe(args.recipe)
    torch.manual_seed(r.seed)
    model = build_model(r.model, init=r.init, dropout=r.dropout).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = feed(model, r.inputs, (64.0, 64.0, 64.0))
    if capture and can_capture(net, amp):
        return {"variant": name, "status": "unavailable", "reason": can_capture(net, amp)}
    optimizer = build_optimizer(model, r)
    step = build_step(net, optimizer, Schedule(optimizer, r, steps_per_epoch=1_000_000), amp_dtype=amp,
                      clip_grad_norm=r.clip_grad_norm, label_smoothing=r.label_smoothing, compile=compile_,
                      capture=capture)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device, generator=gen).to(amp or torch.float32)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch_size,), device=device, generator=gen)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for _ in range(WARMUP_STEPS + 2):  # compilation, cuDNN's choices, the capture
        step(x, y)
    sync()
    warmup = time.perf_counter() - t0
    host = 0.0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        step(x, y)
        host += time.perf_counter() - t
    sync()
    wall = (time.perf_counter() - t0) / args.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step(x, y)
        sync()
    return {"variant": name, "status": "ok", "step": step.kind, "warmup_seconds": warmup,
            "step_ms": wall * 1e3, "host_ms_per_step": host / args.steps * 1e3,
            "images_per_s": args.batch_size / wall,
            **_summarise_trace(prof.events(), args.steps, wall * 1e6, device.type == "cuda")}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--recipe", default="blog", help="whose step: its clipping, label smoothing, dropout, inputs")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="[default: on for CUDA, off on CPU, as train]")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, one per variant, appended")
    args = ap.parse_args(argv)
    if args.channels_last is None:
        args.channels_last = args.device == "cuda"
    import torch

    from alexpipe.train.hardware import use_compile_cache

    use_compile_cache()
    if args.device == "cuda":  # as `alexpipe train` sets them
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    failed = 0
    for name in args.variants.split(","):
        try:
            result = profile_variant(name, args)
        except Exception as exc:  # one form failing must not lose the others
            result = {"variant": name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            failed += 1
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"profile {name}: " + (f"{result['step_ms']:.3f} ms/step, host {result['host_ms_per_step']:.3f} ms"
                                     if result["status"] == "ok" else f"{result['status']}: {result['reason']}"),
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
