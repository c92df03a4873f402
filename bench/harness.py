"""Run configurations side by side and turn timings into medians and ratios.

Every configuration lives in its own worker process (bench/worker.py), warmed
up before any timing. Timing is round-robin: in each round every configuration
times one window, the baseline first, so a ratio is always taken between two
windows measured seconds apart. The machine is noisy; the median over rounds
of those per-round ratios is what gets reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    kind: str  # loader | train | model | overhead | fake
    backend: str = ""  # resident | dali | ffcv | torchvision ("" for model)
    batch_size: int = 128
    workers: int = 2
    dtype: str = "bf16"
    channels_last: bool = False
    device: str = "cpu"
    augment: bool = True
    pca: str = "blog"
    data: str = ""
    rate: float = 0.0  # fake only: images/s
    fail: str = ""  # fake only: fail at setup with this message
    compile: bool = False  # torch.compile the step (and the resident augmentation)

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
    warmup_seconds: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)
    ops_per_step: Optional[float] = None  # overhead only


class Worker:
    """A configuration's process: ready after warm-up, then one timed window per `measure`."""

    def __init__(self, cfg: Config, warmup_seconds: float, log_dir: Path):
        self.cfg = cfg
        self.log = open(log_dir / (cfg.id.replace("/", "_") + ".log"), "w+")
        payload = {**asdict(cfg), "warmup_seconds": warmup_seconds,
                   # loaders that compile (numba, plugin, pipelines) get their whole first epoch as warm-up
                   "warmup_images": 40_000 if cfg.backend in ("ffcv", "dali") else 0}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "alexpipe.bench.worker", json.dumps(payload)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            tail = [ln for ln in self.log.read().splitlines() if ln.strip()][-1:] or ["no output"]
            return {"event": "unavailable", "reason": f"worker exited with status {self.proc.returncode}: {tail[0]}"}
        return json.loads(line)

    def ready(self) -> dict[str, Any]:
        return self._read()

    def measure(self, duration: float, settle: int) -> dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "measure", "duration": duration, "settle": settle}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
            self.proc.kill()
        self.log.close()


def run(configs: list[Config], repeats: int = 5, duration: float = 4.0, settle: int = 10,
        warmup_seconds: float = 3.0, on_event: Callable[[str], None] = lambda msg: None) -> list[Outcome]:
    """Warm every configuration up in its own process, then time `repeats` round-robin rounds."""
    outcomes = [Outcome(c) for c in configs]
    with tempfile.TemporaryDirectory(prefix="alexpipe-bench-") as logs:
        workers: list[Optional[Worker]] = []
        for out in outcomes:
            on_event(f"warming up {out.config.id}")
            w = Worker(out.config, warmup_seconds, Path(logs))
            msg = w.ready()
            if msg["event"] != "ready":
                out.status, out.reason = "unavailable", msg.get("reason", "unknown")
                on_event(f"{out.config.id} unavailable: {out.reason}")
                w.close()
                workers.append(None)
                continue
            out.warmup_seconds = msg["warmup_seconds"]
            out.ops_per_step = msg.get("ops_per_step")
            workers.append(w)
        try:
            for rnd in range(repeats):
                for out, w in zip(outcomes, workers):
                    if w is None or out.status != "ok":
                        continue
                    on_event(f"round {rnd + 1}/{repeats}: {out.config.id}")
                    msg = w.measure(duration, settle)
                    if msg["event"] != "sample":
                        out.status, out.reason = "unavailable", msg.get("reason", "unknown")
                        continue
                    out.samples.append({"round": rnd, "images": msg["images"], "seconds": msg["seconds"],
                                        "images_per_s": msg["images"] / msg["seconds"],
                                        "wait_fraction": msg["wait_seconds"] / msg["seconds"]})
        finally:
            for w in workers:
                if w is not None:
                    w.close()
    return outcomes


def _spread(values: list[float]) -> Optional[dict[str, float]]:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _paired(a: Outcome, b: Outcome) -> list[float]:
    """a / b for every round both measured."""
    rb = {s["round"]: s["images_per_s"] for s in b.samples}
    return [s["images_per_s"] / rb[s["round"]] for s in a.samples if s["round"] in rb]


def summarise(outcomes: list[Outcome], baseline_backend: str = "torchvision") -> list[dict[str, Any]]:
    """One JSON-able record per configuration: medians, spreads, ratios to the baseline and the ceiling."""
    by_id = {o.config.id: o for o in outcomes}
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
        records.append({
            "id": c.id, **asdict(c), "status": "ok" if ok else "unavailable",
            "reason": None if ok else (o.reason or "no sample was measured"),
            "warmup_seconds": o.warmup_seconds, "samples": o.samples,
            "images_per_s": _spread([s["images_per_s"] for s in o.samples]),
            "wait_fraction": _spread([s["wait_fraction"] for s in o.samples]),
            "baseline": base_id if base is not None else None,
            "ratio": {**_spread(ratios), "per_round": ratios} if ratios else None,
            "ceiling": ceil_id if ceil is not None else None,
            "of_ceiling": {**_spread(of_ceiling), "per_round": of_ceiling} if of_ceiling else None,
            **(_overhead(o, base) if c.kind == "overhead" else {}),
        })
    return records


def _baseline(c: Config, baseline_backend: str) -> Optional[str]:
    """What a configuration is compared with: the torchvision loader, or (overhead) the same step uncompiled."""
    if c.kind == "overhead":
        return replace(c, compile=False).id
    return replace(c, backend=baseline_backend).id if c.kind in ("loader", "train", "fake") else None


def _overhead(o: Outcome, base: Optional[Outcome]) -> dict[str, Any]:
    """Host microseconds per step and aten operations per step, and the operations' ratio to eager."""
    per_step = [s["seconds"] / (s["images"] / o.config.batch_size) * 1e6 for s in o.samples]
    ops_ratio = (o.ops_per_step / base.ops_per_step if o.ops_per_step and base is not None and base.ops_per_step
                 else None)
    return {"us_per_step": _spread(per_step), "ops_per_step": o.ops_per_step, "ops_ratio": ops_ratio}
