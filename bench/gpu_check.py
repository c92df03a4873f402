"""`make gpu-check`: everything a GPU can tell us about alexpipe, in one run of at most 8 minutes.

Written for a fresh GPU machine that has Python, torch and numpy (and, as such
machines usually do, typer, rich, safetensors and matplotlib) but no network
and no pip: it runs alexpipe from this source tree with what is installed.
Where DALI or FFCV are missing it says so and measures without them; where
DALI is installed it builds the project's DALI plugin first (with nvcc, for
the GPU operator, where a CUDA toolkit is found) and DALI is measured
everywhere the other loaders are.

The steps, in order, each a subprocess with a time limit:

 1. the environment (GPU, versions, which backends can run);
 2. the DALI plugin build (only where DALI is installed);
 3. `alexpipe convert` of ../shared/data (or --source);
 4. the CUDA tests (every test marked `cuda`, synthetic data only);
 5. the fast recipe for one epoch with an empty torch.compile cache: the cold compile time;
 6. the fast recipe, 15 epochs, on that same cache: the warm compile time, and time to accuracy (wall time,
    test accuracy);
 7. the blog recipe's 49 epochs (resident loader, bf16, channels_last, --compile; alexpipe's own compile
    cache), with each run's compile and capture time and each epoch's time outside training and evaluation;
 8. a profile of the training step, eager, compiled and captured (bench/step_profile.py);
 9. `alexpipe bench all --compile` with short windows;
10. `alexpipe bench overhead` on the resident loader (and DALI), shorter still.

Each step has a budget (BUDGETS, from the times the first H200 run measured, in
bench/results/h200-2026-11-30/) and gets that budget's share of the time left
when it starts: what a fast step leaves goes to the ones after it, and a slow
step is stopped (SIGTERM, so a training run still writes its metrics) before
it can starve them.

Everything lands in one folder (`--out`, else $OUT, else bench/results/gpu-check-<host>), as the MAX_FILES
files of RESULT_FILES: gpu-check.md (every figure, in tables), gpu-check.json (the same, with each step's status
and command), bench.json / bench.md, overhead.json, blog-metrics.jsonl, fast-metrics.jsonl and log.txt (every
command and its output). Checkpoints, the converted data and the cold compile cache stay in a temporary folder.

`--quick` runs the same steps cut to a few batches, on the CPU if there is no GPU, in a few minutes: the test
suite runs it that way, so the script is known to work end to end before a GPU ever runs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
# The results folder is meant to be committed whole (bench/results/) and to stay small enough to read.
MAX_FILES = 8
RESULT_FILES = ("gpu-check.md", "gpu-check.json", "log.txt", "bench.json", "bench.md", "overhead.json",
                "blog-metrics.jsonl", "fast-metrics.jsonl")
assert len(RESULT_FILES) <= MAX_FILES
REPORT_SECONDS = 5.0  # kept back from the last step for writing the report
STOP_GRACE = 15.0  # seconds a stopped step gets after SIGTERM (a training run writes its metrics) before SIGKILL

# Seconds per step, full check (in brackets: the first H200 run, at commit 93ac0e0).
BUDGETS = {
    "dali plugin": 45,  # (not installed there) a C++ and a CUDA file, nvcc for several architectures; from
                        #  alexpipe's cache after the first build, in about a second
    "convert": 12,  # (6 s)
    "cuda tests": 125,  # (111 s)
    "fast recipe, cold cache": 35,  # (epoch 1 of the fast recipe, compilation included: 23 s)
    "fast recipe": 35,  # (72.6 s wall, ~23 s of it compiling, which a warm cache saves; the step is faster now)
    "blog recipe": 85,  # (184 s: ~27 s compiling, ~60 s of per-epoch bookkeeping since taken off the epoch,
                        #  105 s of training steps, since captured whole)
    "profile": 40,  # (new) eager and captured are quick; each compiled form may compile
    "bench all": 105,  # (97 s)
    "bench overhead": 30,  # (stopped after the 42 s it was left; now fewer, shorter configurations)
}
# --quick on a CPU: compiling AlexNet's step takes about a minute on two cores, a warm cache a few seconds.
QUICK_BUDGETS = {"dali plugin": 60, "convert": 30, "cuda tests": 60, "fast recipe, cold cache": 120,
                 "fast recipe": 60, "blog recipe": 45, "profile": 60, "bench all": 80, "bench overhead": 60}


class Check:
    """The run's state: where things go, the time left, and what each step found."""

    def __init__(self, out: Path, work: Path, budget: float, quick: bool, device: str, plan: list[str]):
        self.out, self.work, self.quick, self.device = out, work, quick, device
        self.deadline = time.monotonic() + budget
        self.budgets = QUICK_BUDGETS if quick else BUDGETS
        self.pending = list(plan)  # the steps still to run, for each step's share of the time left
        self.steps: dict[str, dict[str, Any]] = {}
        self.log = open(out / "log.txt", "w")
        # no TORCHINDUCTOR_CACHE_DIR: alexpipe's cache folder holds torch.compile's cache (train/hardware.py), so
        # the steps reuse each other's compiled kernels, as a user's runs do
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.cold_cache = work / "inductor-cold"  # steps 5 and 6 only: empty at step 5, warm at step 6

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, name: str) -> float:
        """This step's budget's share of the time left (the steps after it keep theirs)."""
        share = self.budgets[name] / sum(self.budgets[n] for n in self.pending)
        return max(5.0, (self.left() - REPORT_SECONDS) * share)

    def run(self, name: str, cmd: list[str], env: Optional[dict[str, str]] = None) -> dict[str, Any]:
        """Run one step as a subprocess (its own process group) within its time; a step out of time gets SIGTERM
        and STOP_GRACE seconds, then SIGKILL."""
        timeout = self.timeout(name)
        self.pending.remove(name)
        self.log.write(f"\n===== {name}: {' '.join(cmd)}  (timeout {timeout:.0f} s)\n")
        self.log.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            code: Any = proc.returncode
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGTERM)
            try:
                output, _ = proc.communicate(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                output, _ = proc.communicate()
            code = "timeout"
        self.log.write(output)
        self.log.flush()
        step = {"status": "ok" if code == 0 else f"failed ({code})", "seconds": round(time.monotonic() - t0, 1),
                "timeout": round(timeout), "command": " ".join(cmd), "tail": output.strip().splitlines()[-3:]}
        self.steps[name] = step
        print(f"[gpu-check] {name}: {step['status']} in {step['seconds']} s", flush=True)
        return step


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"hostname": socket.gethostname(), "python": platform.python_version(),
                           "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "backends": {"dali": _installed("nvidia.dali"), "ffcv": _installed("ffcv")}}
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


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def backends(env: dict[str, Any]) -> list[str]:
    return ["resident", "torchvision"] + [b for b in ("dali", "ffcv") if env["backends"][b]]


PLUGIN_SCRIPT = """
import json, time
from alexpipe.pipeline.loaders.dali import build as dali_build
t0 = time.perf_counter()
r = dali_build.build_plugin()
print(json.dumps({"path": str(r.path), "built": r.built, "with_cuda": r.with_cuda,
                  "cuda_home": str(dali_build.find_cuda_home() or ""), "seconds": round(time.perf_counter() - t0, 1)}))
"""


def dali_plugin(c: Check) -> None:
    """Build (or find in alexpipe's cache) the DALI plugin; with nvcc it carries the GPU operator too."""
    step = c.run("dali plugin", [sys.executable, "-c", PLUGIN_SCRIPT])
    last = step["tail"][-1] if step.get("tail") else ""
    if step["status"] == "ok" and last.startswith("{"):
        step["figures"] = json.loads(last)


def convert(c: Check, source: Path) -> Path:
    data = c.work / "cifar10"
    extra = ["--val-size", "50", "--allow-partial"] if c.quick and source != DEFAULT_SOURCE else []
    c.run("convert", [sys.executable, "-m", "alexpipe", "convert", "--source", str(source), "--out", str(data),
                      *extra])
    return data


def cuda_tests(c: Check) -> None:
    """Every test marked `cuda` (tests/test_cuda.py, and the GPU tests of the DALI and FFCV backends, which skip,
    saying so, where those libraries are missing)."""
    step = c.run("cuda tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                                "tests"])
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", "\n".join(step["tail"]))
    step["counts"] = {k: int(n) for n, k in counts}


def _train_args(c: Check, compile_: bool = True) -> list[str]:
    args = ["--loader", "resident", "--amp", "bf16" if c.device == "cuda" else "auto", "--channels-last",
            "--device", c.device, "--log-every", "100"] + (["--compile"] if compile_ else [])
    if c.quick:  # a few batches: one epoch of a small subset
        args += ["--epochs", "1", "--subset", "100", "--eval-subset", "50", "--batch-size", "50"]
    return args


def train(c: Check, name: str, data: Path, recipe: str, extra: list[str], keep_as: Optional[str] = None,
          compile_: bool = True, env: Optional[dict[str, str]] = None) -> None:
    """One `alexpipe train` run; its figures from metrics.jsonl (kept in the results as `keep_as`)."""
    run = c.work / name.replace(" ", "-").replace(",", "")
    step = c.run(name, [sys.executable, "-m", "alexpipe", "train", "--data", str(data), "--out", str(run),
                        "--recipe", recipe, *_train_args(c, compile_), *extra], env=env)
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return
    if keep_as:
        shutil.copy(metrics, c.out / keep_as)
    step["figures"] = training_figures([json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()])


def training_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run's metrics say: time to accuracy, where the time went (training steps, compilation, capture,
    outside training and evaluation), and the speed."""
    epochs = [r for r in records if r.get("type") == "epoch"]
    test = next((r for r in records if r.get("type") == "test"), None)
    outside = [e.get("outside_seconds", 0.0) for e in epochs]
    last = epochs[-1] if epochs else {}
    return {
        "epochs": len(epochs), "test_acc": test["test_acc"] if test else None,
        "final_val_acc": last.get("val_acc"),
        "wall_seconds": round(test["wall_seconds"] if test else last.get("wall_seconds", 0.0), 1),
        "training_seconds": round(sum(e["train_seconds"] for e in epochs), 1),
        "first_epoch_seconds": round(epochs[0]["epoch_seconds"], 1) if epochs else None,
        "compile_seconds": round(test["compile_seconds"] if test else sum(e.get("compile_seconds", 0.0)
                                                                          for e in epochs), 1),
        "capture_seconds": round(test.get("capture_seconds", 0.0), 2) if test else None,
        "outside_seconds_per_epoch": {"mean": round(sum(outside) / len(outside), 3),
                                      "max": round(max(outside), 3)} if outside else None,
        "mean_images_per_s": round(sum(e["images_per_s"] for e in epochs) / max(1, len(epochs))),
    }


def profile(c: Check) -> None:
    """torch.profiler over steady-state steps of each form of the training step (bench/step_profile.py)."""
    results = c.work / "profile.jsonl"
    if c.quick:  # the fast recipe's step, on the compile cache the fast runs warmed, a few steps
        args = ["--recipe", "fast", "--batch-size", "50", "--amp", "auto", "--steps", "3",
                "--variants", "eager,compiled,captured"]
        env = {"TORCHINDUCTOR_CACHE_DIR": str(c.cold_cache), "TRITON_CACHE_DIR": str(c.cold_cache / "triton")}
    else:  # the blog recipe's step, as the blog run trained it
        args, env = ["--recipe", "blog", "--batch-size", "128", "--amp", "bf16", "--steps", "20"], None
    step = c.run("profile", [sys.executable, "-m", "alexpipe.bench.step_profile", "--device", c.device,
                             "--channels-last", "--out", str(results), *args], env=env)
    if results.exists():
        step["figures"] = [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()]


def bench(c: Check, data: Path, what: str, names: list[str]) -> None:
    folder = c.work / f"bench-{what}"
    if c.quick:
        short = ["--duration", "0.3", "--repeats", "1", "--warmup", "0.2", "--settle", "2"]
    elif what == "all":  # the step as the blog run trains it: compiled, and captured (the default on CUDA)
        short = ["--duration", "1", "--repeats", "3", "--warmup", "1", "--settle", "5", "--compile"]
    else:
        short = ["--duration", "0.5", "--repeats", "2", "--warmup", "0.5", "--settle", "5"]
    step = c.run(f"bench {what}", [sys.executable, "-m", "alexpipe", "bench", what, "--data", str(data), "--device",
                                   c.device, "--backends", ",".join(names), "--out", str(folder), *short])
    keep = ("json", "md") if what == "all" else ("json",)
    for suffix in keep:
        if (folder / f"bench.{suffix}").exists():
            shutil.copy(folder / f"bench.{suffix}", c.out / f"{'bench' if what == 'all' else what}.{suffix}")
    if (folder / "bench.json").exists():
        doc = json.loads((folder / "bench.json").read_text())
        step["figures"] = _bench_figures(doc)
        if doc.get("arithmetic"):
            step["arithmetic"] = doc["arithmetic"]


def _bench_figures(doc: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for r in doc["results"]:
        if r["status"] != "ok":
            figures[r["id"]] = "unavailable: " + (r["reason"] or "")
        elif r["kind"] == "overhead":
            figures[r["id"]] = {"step": r.get("step"), "us_per_step": round(r["us_per_step"]["median"], 1),
                                "ops_per_step": r["ops_per_step"], "ops_vs_eager": r["ops_ratio"]}
        else:
            figures[r["id"]] = {"step": r.get("step"), "images_per_s": round(r["images_per_s"]["median"]),
                                "vs_torchvision": r["ratio"]["median"] if r["ratio"] else None,
                                "of_ceiling": r["of_ceiling"]["median"] if r["of_ceiling"] else None,
                                "tflops": round(r["tflops"]["median"], 2) if r.get("tflops") else None,
                                "of_peak": r["of_peak"]["median"] if r.get("of_peak") else None}
    return figures


def _cell(value: Any, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


def _training_table(c: Check) -> list[str]:
    rows = [(n, s["figures"]) for n, s in c.steps.items() if "recipe" in n and s.get("figures")]
    if not rows:
        return []
    lines = ["", "## Training", "",
             "| run | epochs | test acc | wall s | training s | compile s | capture s | outside s/epoch (mean, max) "
             "| img/s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, f in rows:
        out = f["outside_seconds_per_epoch"] or {}
        lines.append(f"| {name} | {f['epochs']} | {_cell(f['test_acc'], '{:.2%}')} | {f['wall_seconds']} | "
                     f"{f['training_seconds']} | {f['compile_seconds']} | {_cell(f['capture_seconds'])} | "
                     f"{_cell(out.get('mean'))}, {_cell(out.get('max'))} | {f['mean_images_per_s']:,} |")
    cold, warm = (c.steps.get(n, {}).get("figures") for n in ("fast recipe, cold cache", "fast recipe"))
    if cold and warm:
        lines += ["", f"torch.compile: {cold['compile_seconds']} s with an empty cache (cold), "
                      f"{warm['compile_seconds']} s with the cache it filled (warm)."]
    return lines


def _profile_table(c: Check) -> list[str]:
    results = c.steps.get("profile", {}).get("figures")
    if not results:
        return []
    lines = ["", "## The training step, profiled", "",
             "| step | ms/step | host ms/step | launches/step | kernels/step | GPU busy | aten ops/step "
             "| top kernels by device time (µs/step) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['status']}: {r.get('reason', '')} | | | | | | |")
            continue
        top = "; ".join(f"{k['name'][:48]} {k['us_per_step']:.0f}" for k in r["top_kernels"]) or "—"
        lines.append(f"| {r['step']} | {r['step_ms']:.3f} | {r['host_ms_per_step']:.3f} | "
                     f"{_cell(r['launches_per_step'], '{:.0f}')} | {_cell(r['kernels_per_step'], '{:.0f}')} | "
                     f"{_cell(r['gpu_busy'], '{:.0%}')} | {r['aten_ops_per_step']:.0f} | {top} |")
    return lines


def _bench_table(c: Check) -> list[str]:
    lines = []
    for name in ("bench all", "bench overhead"):
        step = c.steps.get(name, {})
        if not step.get("figures"):
            continue
        lines += ["", f"## {name}", "", "| configuration | step | figures |", "|---|---|---|"]
        for cid, f in step["figures"].items():
            if isinstance(f, str):
                lines.append(f"| {cid} | | {f} |")
            else:
                rest = {k: v for k, v in f.items() if k != "step" and v is not None}
                lines.append(f"| {cid} | {f.get('step') or '—'} | {json.dumps(rest)} |")
        ar = step.get("arithmetic")
        if ar:
            lines += ["", f"{ar['training_flops_per_image'] / 1e9:.3f} GFLOP per image per training step; measured "
                          f"bf16 matrix rate {ar['bf16_matmul_tflops']:.0f} TFLOP/s ({ar['matmul_size']}³)."]
    return lines


def report(c: Check, env: dict[str, Any]) -> None:
    doc = {"environment": env, "quick": c.quick, "device": c.device, "steps": c.steps}
    (c.out / "gpu-check.json").write_text(json.dumps(doc, indent=2) + "\n")
    gpu = env.get("gpu", {}).get("name", "no GPU")
    lines = [f"# alexpipe gpu-check — {gpu}, {env['date_utc']}", "",
             f"torch {env.get('torch')}, Python {env['python']}, DALI {'yes' if env['backends']['dali'] else 'no'}, "
             f"FFCV {'yes' if env['backends']['ffcv'] else 'no'}; device {c.device}"
             + (" (quick form: every step cut to a few batches)" if c.quick else ""), "",
             "| step | status | seconds | timeout | figures |", "|---|---|---|---|---|"]
    for name, s in c.steps.items():
        figures = s.get("counts") or (s.get("figures") if name == "dali plugin" else None)
        lines.append(f"| {name} | {s['status']} | {s['seconds']} | {s.get('timeout', '—')} | "
                     f"{json.dumps(figures) if figures else ''} |")
    lines += _training_table(c) + _profile_table(c) + _bench_table(c)
    (c.out / "gpu-check.md").write_text("\n".join(lines) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="result folder [default: $OUT, else bench/results/gpu-check-<host>]")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="CIFAR-10 archive to convert")
    ap.add_argument("--quick", action="store_true", help="every step cut to a few batches (minutes, any device)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check [default: 480]")
    a = ap.parse_args(argv)
    if not (math.isfinite(a.budget) and a.budget > 0):
        print(f"gpu-check: --budget must be a positive, finite number of seconds, got {a.budget}", file=sys.stderr)
        return 2
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
    # --quick on a CPU: DALI and FFCV would warm up a whole epoch through a CPU training step (many minutes)
    bench_names = [n for n in names if n in ("resident", "torchvision")] if a.quick else names
    overhead_names = ["resident"] + (["dali"] if "dali" in names and not a.quick else [])
    plan = (["dali plugin"] if "dali" in names else []) + [
        "convert", "cuda tests", "fast recipe, cold cache", "fast recipe", "blog recipe", "profile", "bench all",
        "bench overhead"]
    with tempfile.TemporaryDirectory(prefix="alexpipe-gpu-check-") as work:
        c = Check(out, Path(work), a.budget, a.quick, device, plan)
        cold = {"TORCHINDUCTOR_CACHE_DIR": str(c.cold_cache), "TRITON_CACHE_DIR": str(c.cold_cache / "triton")}
        try:
            if "dali" in names:
                dali_plugin(c)
            data = convert(c, a.source)
            cuda_tests(c)
            train(c, "fast recipe, cold cache", data, "fast", ["--epochs", "1"], env=cold)
            train(c, "fast recipe", data, "fast", [], keep_as="fast-metrics.jsonl", env=cold)
            # --quick: only the fast recipe compiles (a cold compile of each recipe's step is a minute on a CPU)
            train(c, "blog recipe", data, "blog", [], keep_as="blog-metrics.jsonl", compile_=not a.quick)
            profile(c)
            bench(c, data, "all", bench_names)
            bench(c, data, "overhead", overhead_names)
        finally:
            report(c, env)
            c.log.close()
    failed = [n for n, s in c.steps.items() if s["status"] != "ok"]
    print(f"[gpu-check] wrote {out}; " + (f"failed: {', '.join(failed)}" if failed else "every step ok"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
