"""One benchmark configuration in its own process.

The harness starts `python -m alexpipe.bench.worker CONFIG_JSON`; the worker builds the
configuration (its data is opened and checked here) and answers "built"; on
"warmup" it warms up (JIT, plugin build, first epoch of compiling loaders, the
step's compilation and CUDA graph capture) and answers "ready"; then it times
one window per "measure" request. Its stdout is reserved for this protocol
(one JSON object per line): anything a library prints goes to stderr instead.

Kinds: "loader" (a backend alone), "train" (loader + full training step:
train.step's, the step `alexpipe train` runs), "model" (that step on one fixed
batch: the ceiling no loader can beat), "overhead" (that step with the network
replaced by a near-zero-cost one: the host's cost per step, and the operations
it dispatches). `main` takes the function that builds a configuration, so that
another program (the tests' loaders of known speed) can speak the same
protocol. The step is built as `alexpipe train` builds it for the same
flags: `compile` compiles it, `capture` (None: wherever the trainer would)
records it in a CUDA graph, and on CUDA cuDNN picks its algorithms by
benchmarking, as in training.

The worker dies with the process that started it (on Linux), and SIGTERM
ends it through Python's exit path, so a plugin build it was running cleans
up after itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator, Optional

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Endless:
    """Batches forever: a new epoch (set_epoch) whenever one ends."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0
        self.it: Iterator = iter(loader)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self.it = iter(self.loader)
            return next(self.it)


def _tiny_net():
    """A network that costs next to nothing (global mean pool, then 3 -> 10): with it, a training step's time
    is what the host spends around the model: loader, dispatch, loss, optimiser, metrics."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean(dim=(2, 3)))

    return Tiny()


class Work:
    """One unit of a configuration's work per call (a batch, or a training step on one), returning its image
    count; `step` is the training step it runs, if any."""

    def __init__(self, run: Callable[[], int], step: Any = None):
        self.run, self.step = run, step

    def __call__(self) -> int:
        return self.run()

    @property
    def step_kind(self) -> Optional[str]:
        return self.step.kind if self.step is not None else None

    @property
    def min_warmup_steps(self) -> int:
        """Steps a warm-up must run whatever its duration, so that nothing of the kind happens inside a timed
        window: a captured step records its graph after WARMUP_STEPS eager ones; a compiled one compiles its
        forward, backward and clipping in its first step."""
        if self.step is None:
            return 0
        from alexpipe.train.step import WARMUP_STEPS

        return WARMUP_STEPS + 2 if self.step.capture else 2 if self.step.compiled else 0


def build(cfg: dict[str, Any]) -> tuple[Work, Callable[[], float], Any]:
    """(work: runs one unit of work and returns its image count, wait: seconds spent in the loader so far,
    device)."""
    import torch

    from alexpipe.pipeline import make_loader

    device = torch.device(cfg["device"])
    dtype = getattr(torch, DTYPES[cfg["dtype"]])
    compile_ = bool(cfg.get("compile"))
    waited = [0.0]
    loader = None
    if cfg["kind"] in ("loader", "train", "overhead"):
        loader = make_loader(cfg["data"], "train", cfg["backend"], device=device, batch_size=cfg["batch_size"],
                             dtype=dtype, channels_last=cfg["channels_last"], augmented=cfg["augment"],
                             pca=cfg["pca"], num_workers=cfg["workers"], seed=0)
        src = Endless(loader)

        def next_batch():
            t = time.perf_counter()
            b = src.next()
            waited[0] += time.perf_counter() - t
            return b

    if cfg["kind"] == "loader":
        return Work(lambda: len(next_batch()[1])), (lambda: waited[0]), device

    from alexpipe.model import build_model
    from alexpipe.train import step as train_step
    from alexpipe.train.hardware import prepare_device, use_compile_cache
    from alexpipe.train.metrics import EpochMeter
    from alexpipe.train.recipes import get_recipe

    prepare_device(device)  # as `alexpipe train` does
    if compile_:
        use_compile_cache()
    recipe = get_recipe("blog")  # the step of the default recipe: clipping at 2.0, SGD with momentum
    torch.manual_seed(0)
    model = (_tiny_net() if cfg["kind"] == "overhead" else build_model()).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    step = train_step.recipe_step(model, recipe, len(loader) if loader is not None else 1,
                                  amp_dtype=dtype if dtype != torch.float32 else None, compile=compile_,
                                  capture=cfg.get("capture"))
    meter = EpochMeter(device)  # a captured step returns one static tensor: added here before the next step
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    fixed = (torch.randn(cfg["batch_size"], 3, 32, 32, device=device).to(dtype).contiguous(memory_format=fmt),
             torch.randint(0, 10, (cfg["batch_size"],), device=device))

    def run() -> int:
        x, y = next_batch()[:2] if loader is not None else fixed
        meter.add(step(x, y), y.shape[0])
        return y.shape[0]

    return Work(run, step), (lambda: waited[0]), device


def ops_per_step(run: Callable[[], int], steps: int = 20, settle: int = 10) -> float:
    """aten operator calls per step, as torch.profiler records them on the host (nested calls included:
    each one is a trip through the dispatcher); work in loader threads or processes is not counted.

    An average over `steps` steps (an epoch's first step adds the loader's per-epoch work) after `settle`
    more, on top of the warm-up:
    the first compiled steps still compile (recompilations, the lazily compiled backward) and would count
    their tracing."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(settle):
        run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")) / steps


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the process that started it dies (Linux), even by kill -9, and
    exit at once if it is already gone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


Build = Callable[[dict[str, Any]], tuple[Work, Callable[[], float], Any]]


def main(build: Build = build) -> None:
    """The worker's side of the harness's protocol, for the configuration in argv[1], made by `build`."""
    cfg = json.loads(sys.argv[1])
    _die_with_parent(cfg.get("parent", os.getppid()))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter goes to stderr, never into the protocol

    def say(**msg: Any) -> None:
        proto.write(json.dumps(msg) + "\n")

    def unavailable(exc: Exception) -> None:
        say(event="unavailable", reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])

    try:  # report, don't crash the whole benchmark
        work, wait, device = build(cfg)
    except Exception as exc:
        unavailable(exc)
        return
    say(event="built", step=work.step_kind)
    line = sys.stdin.readline()
    if not line or json.loads(line)["cmd"] != "warmup":
        return
    try:
        from alexpipe.train.hardware import compile_seconds

        t0 = time.perf_counter()
        # warm-up: JIT / plugin builds and the step's compilation and capture happen in the first steps;
        # compiling loaders get a whole epoch
        images, steps, epochs_needed = 0, 0, cfg.get("warmup_images", 0)
        while (time.perf_counter() - t0 < cfg.get("warmup_seconds", 2.0) or images < epochs_needed
               or steps < work.min_warmup_steps):
            images += work()
            steps += 1
        _sync(device)
        ops = ops_per_step(work) if cfg["kind"] == "overhead" else None
        warmup_seconds = time.perf_counter() - t0
        peak = None
        if cfg["kind"] == "model" and device.type == "cuda":
            from .flops import matmul_tflops

            peak = matmul_tflops(device)
        say(event="ready", warmup_seconds=warmup_seconds, ops_per_step=ops, step=work.step_kind,
            compile_seconds=compile_seconds() if work.step is not None else None, matmul_tflops=peak)
    except Exception as exc:
        unavailable(exc)
        return
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] != "measure":
            break
        for _ in range(req.get("settle", 0)):  # drain what was prefetched while idle
            work()
        _sync(device)
        w0, t0, images = wait(), time.perf_counter(), 0
        while True:
            images += work()
            if time.perf_counter() - t0 >= req["duration"]:
                break
        _sync(device)
        seconds = time.perf_counter() - t0
        say(event="sample", images=images, seconds=seconds, wait_seconds=wait() - w0)


if __name__ == "__main__":
    main()
