"""Run configurations side by side and turn timings into medians and ratios.

Every configuration lives in its own worker process (bench/worker.py). All
the workers start together and build their configuration (open and check the
data, build the loader and the step) before any of them is warmed up or
timed, so a configuration that cannot run is known in seconds, not after
minutes of other configurations' warm-ups. Then each warms up in turn, and
timing is round-robin: in each round every configuration times one window,
the baseline first, so a ratio is always taken between two windows measured
seconds apart. The machine is noisy; the median over rounds of those
per-round ratios is what gets reported.

Each worker leads its own process group, which holds the processes its
loader starts (torchvision's DataLoader workers, compilers): however the
benchmark ends, finished, failed or interrupted, every group is ended before
`run` returns, and a worker whose parent dies outright dies with it.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
GRACE_SECONDS = 1.0  # after SIGTERM, how long a stopped worker may take before its group is killed
QUIT_SECONDS = 30.0  # how long a finished worker may take to exit after "quit" (its loader shuts down)


WORKER = ("-m", "alexpipe.bench.worker")  # the program a configuration's process runs


@dataclass(frozen=True)
class Config:
    kind: str  # loader | train | model | overhead
    backend: str = ""  # resident | dali | ffcv | torchvision ("" for model)
    batch_size: int = 128
    workers: int = 2
    dtype: str = "bf16"
    channels_last: bool = False
    device: str = "cpu"
    augment: bool = True
    pca: str = "blog"
    data: str = ""
    compile: bool = False  # torch.compile the step
    capture: Optional[bool] = None  # capture the step in a CUDA graph: None = wherever the trainer would

    @property
    def id(self) -> str:
        name = self.backend or ("ceiling" if self.kind == "model" else "")
        return (f"{self.kind}/{name}/b{self.batch_size}" + ("/channels_last" if self.channels_last else "")
                + ("/compiled" if self.compile else ""))


@dataclass
class Outcome:
    config: Config
    status: str = "ok"  # ok | unavailable
    reason: Optional[str] = None
    built: bool = False  # the worker built the configuration (False with status unavailable: it could not)
    warmup_seconds: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)
    ops_per_step: Optional[float] = None  # overhead only
    step: Optional[str] = None  # the training step that ran: eager | compiled | captured | compiled+captured
    compile_seconds: Optional[float] = None  # torch.compile's time in the worker's warm-up
    matmul_tflops: Optional[float] = None  # model on CUDA: the device's measured bf16 matrix rate

    def fail(self, reason: str) -> None:
        self.status, self.reason = "unavailable", reason


class Worker:
    """A configuration's process: built at start, ready after `warm_up`, then one timed window per `measure`."""

    def __init__(self, cfg: Config, warmup_seconds: float, log_dir: Path, program: tuple[str, ...] = WORKER):
        self.cfg = cfg
        self.log = open(log_dir / (cfg.id.replace("/", "_") + f"-{id(self):x}.log"), "w+")
        payload = {**asdict(cfg), "warmup_seconds": warmup_seconds, "parent": os.getpid(),
                   # the folder the user named, whatever the worker's working directory
                   "data": os.path.abspath(cfg.data) if cfg.data else "",
                   # loaders that compile (numba, plugin, pipelines) get their whole first epoch as warm-up
                   "warmup_images": 40_000 if cfg.backend in ("ffcv", "dali") else 0}
        scratch = log_dir / "tmp"  # the worker's (and its loader processes') temporary files: removed with log_dir
        scratch.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "TMPDIR": str(scratch)}
        # start_new_session: the worker leads a process group of its own, which `stop` ends whole
        self.proc = subprocess.Popen([sys.executable, *program, json.dumps(payload)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, start_new_session=True)

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.wait_exit(QUIT_SECONDS)
            self.log.seek(0)
            tail = [ln for ln in self.log.read().splitlines() if ln.strip()][-1:] or ["no output"]
            return {"event": "unavailable", "reason": f"worker exited with status {self._status()}: {tail[0]}"}
        return json.loads(line)

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def built(self) -> dict[str, Any]:
        return self._read()

    def warm_up(self) -> dict[str, Any]:
        self._send({"cmd": "warmup"})
        return self._read()

    def measure(self, duration: float, settle: int) -> dict[str, Any]:
        self._send({"cmd": "measure", "duration": duration, "settle": settle})
        return self._read()

    def _status(self) -> Optional[int]:
        """The worker's exit status (negative: the signal that ended it), None while it runs; read without
        reaping it, so that its pid, and with it its process group's id, stays the worker's until `finish`."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            res = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return -1
        if res is None:
            return None
        return res.si_status if res.si_code == os.CLD_EXITED else -res.si_status

    def wait_exit(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._status() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the worker's process group (the worker and whatever it started)."""
        if self.proc.returncode is None:  # not reaped: the group id is still the worker's
            try:
                os.killpg(self.proc.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def finish(self) -> None:
        """End the group (whatever is left of it), reap the worker, close its log."""
        self.signal_group(signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (BrokenPipeError, OSError):
                pass
        self.log.close()

    def quit(self) -> None:
        """Ask a worker to finish on its own (its loader shuts down cleanly)."""
        self._send({"cmd": "quit"})
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass


def stop_all(workers: list[Worker], graceful: bool) -> None:
    """End every worker's process group. Graceful: each worker is asked to quit and given time to; otherwise
    (an interrupt, a failure) SIGTERM to every group at once, then SIGKILL to what is left after GRACE_SECONDS."""
    if graceful:
        for w in workers:
            w.quit()
        deadline = time.monotonic() + QUIT_SECONDS
        for w in workers:
            w.wait_exit(max(0.0, deadline - time.monotonic()))
    else:
        for w in workers:
            w.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for w in workers:
            w.wait_exit(max(0.0, deadline - time.monotonic()))
    for w in workers:
        w.finish()


def run(configs: list[Config], repeats: int = 5, duration: float = 4.0, settle: int = 10,
        warmup_seconds: float = 3.0, on_event: Callable[[str], None] = lambda msg: None,
        on_built: Callable[[list[Outcome]], None] = lambda outcomes: None,
        program: tuple[str, ...] = WORKER) -> list[Outcome]:
    """Build every configuration in its own process (all at once), then warm each up and time `repeats`
    round-robin rounds.

    `on_built` sees the outcomes once every worker has built (or failed to
    build) its configuration, before anything is warmed up or timed: raising
    there stops the benchmark, and every worker with it. Whatever ends `run`,
    an exception or a signal's included, no worker process outlives it.
    `program`: what each worker process runs (bench/worker.py's protocol).
    """
    outcomes = [Outcome(c) for c in configs]
    workers: list[Worker] = []
    with tempfile.TemporaryDirectory(prefix="alexpipe-bench-") as logs:
        try:
            on_event(f"starting {len(configs)} configuration(s)")
            for c in configs:
                workers.append(Worker(c, warmup_seconds, Path(logs), program))
            live: list[Optional[Worker]] = []
            for out, w in zip(outcomes, workers):
                on_event(f"building {out.config.id}")
                msg = w.built()
                out.built = msg["event"] == "built"
                if not out.built:
                    out.fail(msg.get("reason", "unknown"))
                out.step = msg.get("step")
                live.append(w if out.built else None)
            on_built(outcomes)
            for i, (out, w) in enumerate(zip(outcomes, live)):
                if w is None:
                    continue
                on_event(f"warming up {out.config.id}")
                msg = w.warm_up()
                if msg["event"] != "ready":
                    out.fail(msg.get("reason", "unknown"))
                    on_event(f"{out.config.id} unavailable: {out.reason}")
                    live[i] = None
                    continue
                out.warmup_seconds = msg["warmup_seconds"]
                out.ops_per_step = msg.get("ops_per_step")
                out.step = msg.get("step", out.step)
                out.compile_seconds = msg.get("compile_seconds")
                out.matmul_tflops = msg.get("matmul_tflops")
            for rnd in range(repeats):
                for out, w in zip(outcomes, live):
                    if w is None or out.status != "ok":
                        continue
                    on_event(f"round {rnd + 1}/{repeats}: {out.config.id}")
                    msg = w.measure(duration, settle)
                    if msg["event"] != "sample":
                        out.fail(msg.get("reason", "unknown"))
                        continue
                    out.samples.append({"round": rnd, "images": msg["images"], "seconds": msg["seconds"],
                                        "images_per_s": msg["images"] / msg["seconds"],
                                        "wait_fraction": msg["wait_seconds"] / msg["seconds"]})
        except BaseException:
            stop_all(workers, graceful=False)
            raise
        stop_all(workers, graceful=True)
    return outcomes


def _spread(values: list[float]) -> Optional[dict[str, float]]:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _paired(a: Outcome, b: Outcome) -> list[float]:
    """a / b for every round both measured."""
    rb = {s["round"]: s["images_per_s"] for s in b.samples}
    return [s["images_per_s"] / rb[s["round"]] for s in a.samples if s["round"] in rb]


def peak_tflops(outcomes: list[Outcome]) -> Optional[float]:
    """The device's measured bf16 matrix rate (the best of the measurements made), None where none was (CPU)."""
    rates = [o.matmul_tflops for o in outcomes if o.matmul_tflops]
    return max(rates) if rates else None


def summarise(outcomes: list[Outcome], baseline_backend: str = "torchvision",
              flops_per_image: Optional[float] = None) -> list[dict[str, Any]]:
    """One JSON-able record per configuration: medians, spreads, ratios to the baseline and the ceiling, and,
    given the FLOPs of a training step per image and a measured matrix rate (a GPU), the training step's
    TFLOP/s and their fraction of that rate."""
    by_id = {o.config.id: o for o in outcomes}
    peak = peak_tflops(outcomes)
    records = []
    for o in outcomes:
        c = o.config
        base_id = _baseline(c, baseline_backend)
        ceil_id = replace(c, kind="model", backend="").id if c.kind == "train" else None
        base = by_id.get(base_id) if base_id else None
        ceil = by_id.get(ceil_id) if ceil_id else None
        ok = o.status == "ok" and bool(o.samples)
        ratios = _paired(o, base) if ok and base is not None and base.samples else []
        of_ceiling = _paired(o, ceil) if ok and ceil is not None and ceil.samples else []
        tflops = ([s["images_per_s"] * flops_per_image / 1e12 for s in o.samples]
                  if ok and flops_per_image and peak and c.kind in ("train", "model") else [])
        records.append({
            "id": c.id, **asdict(c), "status": "ok" if ok else "unavailable",
            "reason": None if ok else (o.reason or "no sample was measured"),
            "warmup_seconds": o.warmup_seconds, "step": o.step, "compile_seconds": o.compile_seconds,
            "samples": o.samples,
            "images_per_s": _spread([s["images_per_s"] for s in o.samples]),
            "wait_fraction": _spread([s["wait_fraction"] for s in o.samples]),
            "baseline": base_id if base is not None else None,
            "ratio": {**_spread(ratios), "per_round": ratios} if ratios else None,
            "ceiling": ceil_id if ceil is not None else None,
            "of_ceiling": {**_spread(of_ceiling), "per_round": of_ceiling} if of_ceiling else None,
            "tflops": _spread(tflops), "of_peak": _spread([t / peak for t in tflops]) if tflops else None,
            **(_overhead(o, base) if c.kind == "overhead" else {}),
        })
    return records


def arithmetic(outcomes: list[Outcome], flops_per_image: Optional[float]) -> Optional[dict[str, Any]]:
    """What the TFLOP/s figures rest on, for the report; None where they are not given (no matrix rate was
    measured: a CPU)."""
    peak = peak_tflops(outcomes)
    if not flops_per_image or not peak:
        return None
    from .flops import MATMUL_SIZE

    return {"training_flops_per_image": flops_per_image, "bf16_matmul_tflops": peak, "matmul_size": MATMUL_SIZE}


def _baseline(c: Config, baseline_backend: str) -> Optional[str]:
    """What a configuration is compared with: the torchvision loader, or (overhead) the same step uncompiled."""
    if c.kind == "overhead":
        return replace(c, compile=False).id
    return replace(c, backend=baseline_backend).id if c.kind in ("loader", "train") else None


def _overhead(o: Outcome, base: Optional[Outcome]) -> dict[str, Any]:
    """Host microseconds per step and aten operations per step, and the operations' ratio to eager."""
    per_step = [s["seconds"] / (s["images"] / o.config.batch_size) * 1e6 for s in o.samples]
    ops_ratio = (o.ops_per_step / base.ops_per_step if o.ops_per_step and base is not None and base.ops_per_step
                 else None)
    return {"us_per_step": _spread(per_step), "ops_per_step": o.ops_per_step, "ops_ratio": ops_ratio}
