"""`make gpu-check` in its quick form: the script a GPU machine will run, run end to end here first; and its
time budget, which must let every step run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from alexpipe.bench import gpu_check

from conftest import make_source, synthetic_batches

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_form_runs_every_step_and_writes_its_result_files(tmp_path):
    src = make_source(tmp_path, synthetic_batches(), "python", "archive")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "bench/gpu_check.py", "--quick", "--device", "cpu", "--source", str(src),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr + (out / "log.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_check.RESULT_FILES)
    assert len(gpu_check.RESULT_FILES) <= gpu_check.MAX_FILES
    doc = json.loads((out / "gpu-check.json").read_text())
    steps = doc["steps"]
    dali = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    assert list(steps) == (["dali plugin"] if dali else []) + [
        "convert", "cuda tests", "fast recipe, cold cache", "fast recipe", "blog recipe", "profile", "bench all",
        "bench overhead"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    if dali:
        assert Path(steps["dali plugin"]["figures"]["path"]).is_file()
    for name in ("fast recipe, cold cache", "fast recipe", "blog recipe"):
        figures = steps[name]["figures"]
        assert figures["epochs"] == 1 and figures["test_acc"] is not None
        assert figures["compile_seconds"] >= 0 and figures["outside_seconds_per_epoch"]["mean"] >= 0
    profile = {r["variant"]: r for r in steps["profile"]["figures"]}
    assert profile["eager"]["status"] == "ok" and profile["eager"]["aten_ops_per_step"] > 0
    assert profile["compiled"]["step"] == "compiled"
    assert profile["captured"]["status"] == "unavailable" and "CUDA" in profile["captured"]["reason"]
    bench = steps["bench all"]["figures"]
    assert bench["train/resident/b128"]["of_ceiling"] > 0 and bench["model/ceiling/b128"]["step"] == "eager"
    overhead = steps["bench overhead"]["figures"]
    assert overhead["overhead/resident/b128/compiled"]["ops_per_step"] > 0
    md = (out / "gpu-check.md").read_text()
    assert "| blog recipe | ok |" in md and "## The training step, profiled" in md and "torch.compile:" in md


@pytest.mark.parametrize("budget", ["nan", "inf", "0"])
def test_refuses_a_budget_that_is_not_a_positive_finite_number(tmp_path, budget):
    assert gpu_check.main(["--quick", "--device", "cpu", "--budget", budget, "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_refuses_a_full_check_without_a_gpu(tmp_path):
    res = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "--quick" in res.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize("with_dali", [False, True])
def test_every_step_gets_at_least_its_budget_within_the_eight_minutes(tmp_path, with_dali):
    """Even if every step used all the time it was given, each would get its whole budget (a step that the first
    GPU run measured gets more than it took there); a step that finishes early (the DALI plugin, found in the
    cache) leaves its time to the later ones."""
    plan = [n for n in gpu_check.BUDGETS if with_dali or n != "dali plugin"]
    c = gpu_check.Check(tmp_path, tmp_path, 480.0, False, "cuda", plan)
    c.log.close()
    given = {}
    for name in plan:
        given[name] = c.timeout(name)
        c.pending.remove(name)
        used = 1.0 if name == "dali plugin" else given[name]
        c.deadline -= used
    assert all(given[n] >= gpu_check.BUDGETS[n] for n in plan if n != "dali plugin"), given
    assert sum(1.0 if n == "dali plugin" else given[n] for n in plan) <= 480.0
    assert given["cuda tests"] > 111 and given["bench all"] > 97 and given["convert"] > 6  # measured on the H200
    assert "TORCHINDUCTOR_CACHE_DIR" not in c.env or c.env["TORCHINDUCTOR_CACHE_DIR"] == \
        __import__("os").environ.get("TORCHINDUCTOR_CACHE_DIR")  # alexpipe's cache, not a throwaway folder


def test_the_profile_counts_overlapping_device_work_once():
    from alexpipe.bench.step_profile import _busy_us

    assert _busy_us([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert _busy_us([]) == 0


def test_training_figures_take_compile_capture_and_outside_time_from_the_metrics():
    records = [{"type": "epoch", "epoch": e, "train_seconds": 2.0, "epoch_seconds": 2.5 + e, "val_acc": 0.5,
                "outside_seconds": 0.1 * e, "compile_seconds": 9.0 if e == 1 else 0.0, "images_per_s": 100.0,
                "wall_seconds": 3.0 * e} for e in (1, 2)]
    records.append({"type": "test", "test_acc": 0.8, "wall_seconds": 7.0, "compile_seconds": 9.5,
                    "capture_seconds": 0.25})
    f = gpu_check.training_figures(records)
    assert f["epochs"] == 2 and f["test_acc"] == 0.8 and f["wall_seconds"] == 7.0 and f["training_seconds"] == 4.0
    assert f["compile_seconds"] == 9.5 and f["capture_seconds"] == 0.25 and f["first_epoch_seconds"] == 3.5
    assert f["outside_seconds_per_epoch"] == {"mean": 0.15, "max": 0.2}
