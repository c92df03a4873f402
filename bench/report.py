"""The benchmark's outputs: JSON (every sample + the environment), Markdown, PNG, terminal table."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

from alexpipe.provenance import git_commit

SCHEMA_ID = "alexpipe-bench/1"
SCHEMA_PATH = Path(__file__).with_name("schema.json")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    commit = git_commit()
    return {
        "hostname": socket.gethostname(), "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
        "platform": platform.platform(), "git_commit": None if commit == "unknown" else commit,
        "versions": {d: _version(d) for d in ("torch", "torchvision", "nvidia-dali-cuda130", "ffcv", "numba",
                                              "numpy", "alexpipe")},
    }


def document(records: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA_ID, "environment": environment(), "settings": settings, "results": records}


def _fmt_rate(spread: dict | None) -> str:
    if not spread:
        return "—"
    return f"{spread['median']:,.0f} ({spread['min']:,.0f}–{spread['max']:,.0f})"


def _fmt_ratio(r: dict | None, unit: str = "x") -> str:
    if not r:
        return "—"
    if unit == "%":
        return f"{100 * r['median']:.1f}% ({100 * r['min']:.1f}–{100 * r['max']:.1f})"
    return f"{r['median']:.2f}x ({r['min']:.2f}–{r['max']:.2f})"


def rows(doc: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in doc["results"]:
        if r["kind"] == "overhead":
            continue
        if r["status"] != "ok":
            out.append([r["id"], "unavailable", r["reason"] or "", "", ""])
            continue
        stall = f"{100 * r['wait_fraction']['median']:.1f}%" if r["kind"] == "train" else "—"
        is_base = r["baseline"] == r["id"]
        out.append([r["id"], _fmt_rate(r["images_per_s"]), "baseline" if is_base else _fmt_ratio(r["ratio"]),
                    _fmt_ratio(r["of_ceiling"], "%"), stall])
    return out


HEADER = ["configuration", "images/s median (min–max)", "vs torchvision", "of model-only ceiling", "data stall"]
OVERHEAD_HEADER = ["configuration", "host µs/step median (min–max)", "aten ops/step", "ops vs eager",
                   "speed vs eager"]


def overhead_rows(doc: dict[str, Any]) -> list[list[str]]:
    """The host-cost table: one row per (backend, eager | compiled)."""
    out = []
    for r in doc["results"]:
        if r["kind"] != "overhead":
            continue
        if r["status"] != "ok":
            out.append([r["id"], "unavailable", r["reason"] or "", "", ""])
            continue
        us = r["us_per_step"]
        eager = r["baseline"] == r["id"]
        out.append([r["id"], f"{us['median']:,.0f} ({us['min']:,.0f}–{us['max']:,.0f})",
                    f"{r['ops_per_step']:,.1f}" if r["ops_per_step"] is not None else "—",
                    "eager" if eager else (f"{r['ops_ratio']:.2f}x" if r["ops_ratio"] else "—"),
                    "eager" if eager else _fmt_ratio(r["ratio"])])
    return out


def markdown(doc: dict[str, Any]) -> str:
    env, st = doc["environment"], doc["settings"]
    lines = [
        f"# alexpipe benchmark — {env['hostname']}, {env['date_utc']}",
        "",
        f"Machine: {env['cpu']} ({env['cpu_cores']} cores), GPU: {env['gpu'] or 'none'}; torch "
        f"{env['versions']['torch']}, DALI {env['versions']['nvidia-dali-cuda130']}, FFCV {env['versions']['ffcv']}; "
        f"commit {env['git_commit']}.",
        f"Settings: {st['repeats']} rounds of {st['duration']} s windows after warm-up, device {st['device']}, "
        f"dtype {st['dtype']}, channels_last {'both' if st.get('both_layouts') else st['channels_last']}, "
        f"augmentation {'on' if st['augment'] else 'off'} "
        f"(PCA {st['pca']}), workers/threads {st['workers']}. Ratios are medians of per-round ratios.",
        "",
    ]
    main = rows(doc)
    if main:
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in main]
    overhead = overhead_rows(doc)
    if overhead:
        lines += ([""] if main else []) + ["Host cost of the training step with the network replaced by a near-zero-cost one (global "
                  "mean pool + 3 -> 10 linear): microseconds per step, and aten operator calls per step as "
                  "torch.profiler records them on the host (nested calls included), eager against torch.compile "
                  "(the step's forward + loss + sums, its clipping, and the resident loader's augmentation).", "",
                  "| " + " | ".join(OVERHEAD_HEADER) + " |", "|" + "---|" * len(OVERHEAD_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in overhead]
    return "\n".join(lines) + "\n"


def chart(doc: dict[str, Any], path: Path) -> None:
    from alexpipe.train.plot import plt, save_figure  # plot selects matplotlib's file-only backend

    ok = [r for r in doc["results"] if r["status"] == "ok" and r["kind"] != "overhead"]
    if not ok:
        _overhead_chart([r for r in doc["results"] if r["status"] == "ok"], doc, path)
        return
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(ok) + 1.5))
    names = [r["id"] for r in ok]
    med = [r["images_per_s"]["median"] for r in ok]
    lo = [m - r["images_per_s"]["min"] for m, r in zip(med, ok)]
    hi = [r["images_per_s"]["max"] - m for m, r in zip(med, ok)]
    colors = ["tab:gray" if r["backend"] == "torchvision" else "tab:orange" if r["kind"] == "model" else "tab:blue"
              for r in ok]
    ax.barh(names, med, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_xscale("log")
    for i, r in enumerate(ok):
        label = f"{med[i]:,.0f}/s"
        if r["ratio"]:
            label += f"  {r['ratio']['median']:.1f}x torchvision"
        if r["of_ceiling"]:
            label += f"  {100 * r['of_ceiling']['median']:.0f}% of ceiling"
        ax.text(med[i] * 1.05, i, label, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images / second (log scale)")
    env = doc["environment"]
    ax.set_title(f"alexpipe bench — {env['cpu']}{' + ' + env['gpu'] if env['gpu'] else ''}", fontsize=10)
    ax.set_xlim(right=max(med) * 30)
    save_figure(fig, path)


def _overhead_chart(ok: list[dict[str, Any]], doc: dict[str, Any], path: Path) -> None:
    """Bars of host microseconds per step, annotated with aten operations per step."""
    from alexpipe.train.plot import plt, save_figure

    fig, ax = plt.subplots(figsize=(9, 0.5 * max(len(ok), 1) + 1.5))
    names = [r["id"] for r in ok]
    med = [r["us_per_step"]["median"] for r in ok]
    ax.barh(names, med, color=["tab:green" if r["compile"] else "tab:blue" for r in ok])
    for i, r in enumerate(ok):
        ops = r["ops_per_step"]
        ax.text(med[i] * 1.02, i, f"{med[i]:,.0f} µs" + (f", {ops:,.0f} ops" if ops is not None else ""),
                va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("host microseconds per step (near-zero-cost network)")
    env = doc["environment"]
    ax.set_title(f"alexpipe bench overhead — {env['cpu']}{' + ' + env['gpu'] if env['gpu'] else ''}", fontsize=10)
    if med:
        ax.set_xlim(right=max(med) * 1.4)
    save_figure(fig, path)


def write_all(doc: dict[str, Any], out: Path, stem: str = "bench") -> list[Path]:
    """bench.json, bench.md, bench.png in `out`, each through `alexpipe.atomic` (a full disk is one WriteError
    naming the file, and leaves no temporary file)."""
    from alexpipe.atomic import WriteError, write_text

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(out, exc) from None
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    for p, text in ((paths[0], json.dumps(doc, indent=2) + "\n"), (paths[1], markdown(doc))):
        write_text(p, text)
    chart(doc, paths[2])
    return paths
