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


def document(records: list[dict[str, Any]], settings: dict[str, Any],
             arithmetic: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole report; `arithmetic` (FLOPs per image, the measured matrix rate) only where it was measured."""
    doc = {"schema": SCHEMA_ID, "environment": environment(), "settings": settings, "results": records}
    if arithmetic:
        doc["arithmetic"] = arithmetic
    return doc


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


def _fmt_tflops(spread: dict | None) -> str:
    return f"{spread['median']:.1f} ({spread['min']:.1f}–{spread['max']:.1f})" if spread else "—"


def rows(doc: dict[str, Any]) -> list[list[str]]:
    out = []
    width = len(header(doc))
    for r in doc["results"]:
        if r["kind"] == "overhead":
            continue
        if r["status"] != "ok":
            out.append([r["id"], r.get("step") or "—", "unavailable", r["reason"] or ""] + [""] * (width - 4))
            continue
        stall = f"{100 * r['wait_fraction']['median']:.1f}%" if r["kind"] == "train" else "—"
        is_base = r["baseline"] == r["id"]
        row = [r["id"], r.get("step") or "—", _fmt_rate(r["images_per_s"]),
               "baseline" if is_base else _fmt_ratio(r["ratio"]), _fmt_ratio(r["of_ceiling"], "%"), stall]
        if "arithmetic" in doc:
            row += [_fmt_tflops(r.get("tflops")), _fmt_ratio(r.get("of_peak"), "%")]
        out.append(row)
    return out


HEADER = ["configuration", "step", "images/s median (min–max)", "vs torchvision", "of model-only ceiling",
          "data stall"]
ARITHMETIC_HEADER = ["TFLOP/s", "of measured bf16 peak"]


def header(doc: dict[str, Any]) -> list[str]:
    """The main table's columns: TFLOP/s and the fraction of the device's matrix rate only where that rate
    was measured (a GPU)."""
    return HEADER + (ARITHMETIC_HEADER if "arithmetic" in doc else [])


OVERHEAD_HEADER = ["configuration", "step", "host µs/step median (min–max)", "aten ops/step", "ops vs uncompiled",
                   "speed vs uncompiled"]


def overhead_rows(doc: dict[str, Any]) -> list[list[str]]:
    """The host-cost table: one row per (backend, uncompiled | compiled)."""
    out = []
    for r in doc["results"]:
        if r["kind"] != "overhead":
            continue
        if r["status"] != "ok":
            out.append([r["id"], r.get("step") or "—", "unavailable", r["reason"] or "", "", ""])
            continue
        us = r["us_per_step"]
        base = r["baseline"] == r["id"]
        out.append([r["id"], r.get("step") or "—", f"{us['median']:,.0f} ({us['min']:,.0f}–{us['max']:,.0f})",
                    f"{r['ops_per_step']:,.1f}" if r["ops_per_step"] is not None else "—",
                    "baseline" if base else (f"{r['ops_ratio']:.2f}x" if r["ops_ratio"] else "—"),
                    "baseline" if base else _fmt_ratio(r["ratio"])])
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
        f"(PCA {st['pca']}), workers/threads {st['workers']}, torch.compile {'on' if st.get('compile') else 'off'}"
        f", CUDA graphs {_graphs(st.get('cuda_graphs'))}. Ratios are medians of per-round ratios; \"step\" is the "
        f"training step that ran.",
    ]
    ar = doc.get("arithmetic")
    if ar:
        lines.append(f"Arithmetic: a training step costs {ar['training_flops_per_image'] / 1e9:.3f} GFLOP per image "
                     f"(counted with torch's FLOP counter); the device's bf16 matrix rate, measured with a "
                     f"{ar['matmul_size']}³ product, is {ar['bf16_matmul_tflops']:.0f} TFLOP/s.")
    lines.append("")
    main = rows(doc)
    if main:
        cols = header(doc)
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in main]
    overhead = overhead_rows(doc)
    if overhead:
        lines += ([""] if main else []) + ["Host cost of the training step with the network replaced by a near-zero-cost one (global "
                  "mean pool + 3 -> 10 linear): microseconds per step, and aten operator calls per step as "
                  "torch.profiler records them on the host (nested calls included), without and with torch.compile "
                  "(the step's forward + loss + sums, and its clipping); on CUDA the step is also captured in a "
                  "CUDA graph unless --no-cuda-graphs (the \"step\" column).", "",
                  "| " + " | ".join(OVERHEAD_HEADER) + " |", "|" + "---|" * len(OVERHEAD_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in overhead]
    return "\n".join(lines) + "\n"


def _graphs(setting: bool | None) -> str:
    return {True: "on", False: "off"}.get(setting, "wherever the trainer captures (CUDA, bf16/fp32)")


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
