"""`make gpu-check`: everything a GPU can tell us, in one run of at most 8 minutes, on a fresh GPU machine.

The machine is assumed to have Python, torch and numpy (and, as such machines
usually do, typer, rich, safetensors and matplotlib) but no network and no pip,
so this runs alexpipe from the source tree with what is installed: where DALI
or FFCV are missing it says so and measures the resident and torchvision
loaders only. In order, each step time-boxed so that one slow step cannot eat
the others' time:

1. the environment (GPU, versions, which backends can run);
2. `alexpipe convert` of ../shared/data (or --source);
3. the CUDA tests (tests/test_cuda.py and the GPU tests of the DALI and FFCV files);
4. the blog recipe's 49 epochs: resident loader, bf16, channels_last, --compile;
5. `alexpipe bench all --device cuda` with short windows;
6. `alexpipe bench overhead --device cuda`: host cost per step, eager and compiled.

Everything lands in one folder (`--out`, else $OUT, else bench/results/gpu-check-<host>), as at most eight files
(the device tool brings back eight): gpu-check.md (the figures), gpu-check.json (the same, and each step's
status), bench.json / bench.md, overhead.json / overhead.md, blog-metrics.jsonl, log.txt (every command and its
output). Checkpoints and the converted data stay in a temporary folder.

`--quick` runs the same steps cut to a few batches, on the CPU if there is no GPU, in a few minutes: the test
suite runs it that way, so the script is known to work end to end before a GPU ever runs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"


class Check:
    """The run's state: where things go, the time left, and what each step found."""

    def __init__(self, out: Path, work: Path, budget: float, quick: bool, device: str):
        self.out, self.work, self.quick, self.device = out, work, quick, device
        self.deadline = time.monotonic() + budget
        self.steps: dict[str, dict[str, Any]] = {}
        self.log = open(out / "log.txt", "w")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor")}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], cap: float, reserve: float = 0.0) -> dict[str, Any]:
        """Run one step as a subprocess with at most `cap` seconds (and never into the last `reserve`)."""
        timeout = max(5.0, min(cap, self.left() - reserve))
        self.log.write(f"\n===== {name}: {' '.join(cmd)}  (timeout {timeout:.0f} s)\n")
        self.log.flush()
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=timeout)
            output, code = res.stdout, res.returncode
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            code = "timeout"
        self.log.write(output)
        self.log.flush()
        step = {"status": "ok" if code == 0 else f"failed ({code})", "seconds": round(time.monotonic() - t0, 1),
                "command": " ".join(cmd), "tail": output.strip().splitlines()[-3:]}
        self.steps[name] = step
        print(f"[gpu-check] {name}: {step['status']} in {step['seconds']} s", flush=True)
        return step


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"hostname": socket.gethostname(), "python": platform.python_version(),
                           "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "backends": {"dali": importlib.util.find_spec("nvidia.dali") is not None,
                                        "ffcv": importlib.util.find_spec("ffcv") is not None}}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.cuda.is_available()
        if env["cuda"]:
            p = torch.cuda.get_device_properties(0)
            env["gpu"] = {"name": p.name, "count": torch.cuda.device_count(), "memory_gib": round(p.total_memory / 2**30, 1),
                          "capability": f"{p.major}.{p.minor}",
                          "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False)}
    except Exception as exc:  # report, never die here
        env["torch_error"] = f"{type(exc).__name__}: {exc}"
    smi = shutil.which("nvidia-smi")
    if smi:
        res = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["nvidia_smi"] = res.stdout.strip()
    return env


def backends(env: dict[str, Any]) -> list[str]:
    have = ["resident", "torchvision"] + [b for b in ("dali", "ffcv") if env["backends"][b]]
    return have


def convert(c: Check, source: Path) -> Path:
    data = c.work / "cifar10"
    extra = ["--val-size", "50", "--allow-partial"] if c.quick and source != DEFAULT_SOURCE else []
    c.run("convert", [sys.executable, "-m", "alexpipe", "convert", "--source", str(source), "--out", str(data),
                      *extra], cap=120)
    return data


def cuda_tests(c: Check) -> None:
    """Every test marked `cuda` (tests/test_cuda.py, and the GPU tests of the DALI and FFCV backends, which skip,
    saying so, where those libraries are missing)."""
    step = c.run("cuda tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                                "tests"], cap=60 if c.quick else 170, reserve=0 if c.quick else 240)
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", "\n".join(step["tail"]))
    step["counts"] = {k: int(n) for n, k in counts}


def blog(c: Check, data: Path) -> None:
    run = c.work / "blog"
    args = ["--loader", "resident", "--amp", "bf16" if c.device == "cuda" else "auto", "--channels-last",
            "--compile", "--device", c.device, "--log-every", "100"]
    if c.quick:  # a few batches: one epoch of a small subset
        args += ["--epochs", "1", "--subset", "100", "--eval-subset", "50", "--batch-size", "50"]
    step = c.run("blog recipe", [sys.executable, "-m", "alexpipe", "train", "--data", str(data), "--out", str(run),
                                 *args], cap=240 if not c.quick else 150, reserve=0 if c.quick else 100)
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        shutil.copy(metrics, c.out / "blog-metrics.jsonl")
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        epochs = [r for r in records if r["type"] == "epoch"]
        test = next((r for r in records if r["type"] == "test"), None)
        step["figures"] = {
            "epochs": len(epochs), "training_seconds": round(sum(e["train_seconds"] for e in epochs), 1),
            "wall_seconds": round(test["wall_seconds"], 1) if test else None,
            "mean_images_per_s": round(sum(e["images_per_s"] for e in epochs) / max(1, len(epochs))),
            "test_acc": test["test_acc"] if test else None, "final_val_acc": epochs[-1]["val_acc"] if epochs else None}


def bench(c: Check, data: Path, what: str, names: list[str]) -> None:
    folder = c.work / f"bench-{what}"
    short = ["--duration", "0.3", "--repeats", "1", "--warmup", "0.2", "--settle", "2"] if c.quick else \
        ["--duration", "1", "--repeats", "3", "--warmup", "1", "--settle", "5"]
    step = c.run(f"bench {what}", [sys.executable, "-m", "alexpipe", "bench", what, "--data", str(data), "--device",
                                   c.device, "--backends", ",".join(names), "--out", str(folder), *short],
                 cap=120 if c.quick else 100)
    stem = "bench" if what == "all" else what
    for suffix in ("json", "md"):
        if (folder / f"bench.{suffix}").exists():
            shutil.copy(folder / f"bench.{suffix}", c.out / f"{stem}.{suffix}")
    if (folder / "bench.json").exists():
        step["figures"] = _bench_figures(json.loads((folder / "bench.json").read_text()))


def _bench_figures(doc: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for r in doc["results"]:
        if r["status"] != "ok":
            figures[r["id"]] = "unavailable: " + (r["reason"] or "")
        elif r["kind"] == "overhead":
            figures[r["id"]] = {"us_per_step": round(r["us_per_step"]["median"], 1), "ops_per_step": r["ops_per_step"],
                                "ops_vs_eager": r["ops_ratio"]}
        else:
            figures[r["id"]] = {"images_per_s": round(r["images_per_s"]["median"]),
                                "vs_torchvision": r["ratio"]["median"] if r["ratio"] else None,
                                "of_ceiling": r["of_ceiling"]["median"] if r["of_ceiling"] else None}
    return figures


def report(c: Check, env: dict[str, Any]) -> None:
    doc = {"environment": env, "quick": c.quick, "device": c.device, "steps": c.steps}
    (c.out / "gpu-check.json").write_text(json.dumps(doc, indent=2) + "\n")
    gpu = env.get("gpu", {}).get("name", "no GPU")
    lines = [f"# alexpipe gpu-check — {gpu}, {env['date_utc']}", "",
             f"torch {env.get('torch')}, Python {env['python']}, DALI {'yes' if env['backends']['dali'] else 'no'}, "
             f"FFCV {'yes' if env['backends']['ffcv'] else 'no'}; device {c.device}"
             + (" (quick form: every step cut to a few batches)" if c.quick else ""), "",
             "| step | status | seconds | figures |", "|---|---|---|---|"]
    for name, s in c.steps.items():
        figures = s.get("figures") or s.get("counts") or ""
        lines.append(f"| {name} | {s['status']} | {s['seconds']} | {json.dumps(figures) if figures else ''} |")
    (c.out / "gpu-check.md").write_text("\n".join(lines) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="result folder [default: $OUT, else bench/results/gpu-check-<host>]")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="CIFAR-10 archive to convert")
    ap.add_argument("--quick", action="store_true", help="every step cut to a few batches (minutes, any device)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check [default: 480]")
    a = ap.parse_args(argv)
    env = environment()
    device = ("cuda" if env.get("cuda") else "cpu") if a.device == "auto" else a.device
    if device == "cuda" and not env.get("cuda"):
        print("gpu-check: no CUDA GPU is visible to torch here; run with --quick --device cpu to check the script",
              file=sys.stderr)
        return 1
    if device == "cpu" and not a.quick:
        print("gpu-check: the full check needs a GPU; --quick runs it cut down on the CPU", file=sys.stderr)
        return 1
    if not a.source.exists():
        print(f"gpu-check: no CIFAR-10 archive at {a.source} (pass --source)", file=sys.stderr)
        return 1
    out = a.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else
                    ROOT / "bench" / "results" / f"gpu-check-{socket.gethostname()}")
    out.mkdir(parents=True, exist_ok=True)
    names = backends(env)
    missing = [b for b in ("dali", "ffcv") if b not in names]
    if missing:
        print(f"[gpu-check] {' and '.join(missing)} not installed here: measuring {', '.join(names)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="alexpipe-gpu-check-") as work:
        c = Check(out, Path(work), a.budget, a.quick, device)
        try:
            data = convert(c, a.source)
            cuda_tests(c)
            blog(c, data)
            quick_names = [n for n in names if n in ("resident", "torchvision")] if a.quick else names
            bench(c, data, "all", quick_names)
            bench(c, data, "overhead", ["resident"] if a.quick else names)
        finally:
            report(c, env)
            c.log.close()
    failed = [n for n, s in c.steps.items() if s["status"] != "ok"]
    print(f"[gpu-check] wrote {out}; " + (f"failed: {', '.join(failed)}" if failed else "every step ok"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
