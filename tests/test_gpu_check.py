"""`make gpu-check` in its quick form: the script a GPU machine will run, run end to end here first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_source, synthetic_batches

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_form_runs_every_step_and_writes_at_most_eight_files(tmp_path):
    src = make_source(tmp_path, synthetic_batches(), "python", "archive")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "bench/gpu_check.py", "--quick", "--device", "cpu", "--source", str(src),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr + (out / "log.txt").read_text()
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["gpu-check.md", "gpu-check.json", "bench.json", "bench.md", "overhead.json",
                            "overhead.md", "blog-metrics.jsonl", "log.txt"])  # what the device tool brings back
    doc = json.loads((out / "gpu-check.json").read_text())
    steps = doc["steps"]
    assert list(steps) == ["convert", "cuda tests", "blog recipe", "bench all", "bench overhead"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert steps["blog recipe"]["figures"]["epochs"] == 1 and steps["blog recipe"]["figures"]["test_acc"] is not None
    assert steps["bench all"]["figures"]["train/resident/b128"]["of_ceiling"] > 0
    overhead = steps["bench overhead"]["figures"]
    assert overhead["overhead/resident/b128/compiled"]["ops_per_step"] > 0
    assert "| blog recipe | ok |" in (out / "gpu-check.md").read_text()


def test_refuses_a_full_check_without_a_gpu(tmp_path):
    res = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "--quick" in res.stderr and not any(tmp_path.iterdir())
