"""The benchmark harness: ordering and ratios of loaders of known speed, reports, failures."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from alexpipe.bench import harness, report
from alexpipe.train.recipes import get_recipe

import fake_worker



def _doc(outcomes, baseline="slow-1500"):
    settings = {"repeats": 3, "duration": 1.0, "settle": 2, "warmup_seconds": 0.2, "device": "cpu", "dtype": "fp32",
                "channels_last": False, "augment": True, "pca": "blog", "workers": 0, "batch_sizes": [64],
                "backends": ["slow-1500", "fast-6000"]}
    return report.document(harness.summarise(outcomes, baseline_backend=baseline), settings)


@pytest.mark.slow
def test_fake_loaders_of_known_speed_order_and_ratio(tmp_path):
    configs = [harness.Config(kind="loader", backend=b, batch_size=64) for b in ("slow-1500", "fast-6000", "no-dali")]
    outcomes = harness.run(configs, repeats=3, duration=1.0, settle=2, warmup_seconds=0.2, program=fake_worker.PROGRAM)
    doc = _doc(outcomes)
    res = {r["backend"]: r for r in doc["results"]}
    slow, fast, broken = res["slow-1500"], res["fast-6000"], res["no-dali"]
    assert len(slow["samples"]) == len(fast["samples"]) == 3
    assert fast["images_per_s"]["median"] > slow["images_per_s"]["median"]
    assert fast["ratio"]["median"] == pytest.approx(4.0, rel=0.25)
    assert len(fast["ratio"]["per_round"]) == 3 and slow["ratio"]["median"] == pytest.approx(1.0)
    # a backend that cannot start is reported with its reason, not a crash
    assert broken["status"] == "unavailable" and "DALI is not installed" in broken["reason"]
    assert broken["samples"] == [] and broken["ratio"] is None

    validate(doc)
    paths = report.write_all(doc, tmp_path / "out")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "bench.png"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(doc))
    md = paths[1].read_text()
    assert "| loader/fast-6000/b64 |" in md and "unavailable" in md and "4." in md
    assert Image.open(paths[2]).size[0] > 500


def validate(doc: dict) -> None:
    """Check `doc` against bench/schema.json. jsonschema comes with the dev extra; it is imported here, not at
    the top, so that `pytest -m cuda` on a machine without it still collects this file."""
    import jsonschema

    jsonschema.validate(doc, json.loads(report.SCHEMA_PATH.read_text()))


def test_schema_rejects_a_malformed_document():
    import jsonschema

    outcomes = [harness.Outcome(harness.Config(kind="loader", backend="slow-1500", batch_size=8),
                                samples=[{"round": 0, "images": 8, "seconds": 0.1, "images_per_s": 80.0,
                                          "wait_fraction": 0.0}])]
    doc = _doc(outcomes)
    schema = json.loads(report.SCHEMA_PATH.read_text())
    jsonschema.validate(doc, schema)
    del doc["results"][0]["images_per_s"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_both_layouts_are_paired_with_their_own_baseline_and_ceiling():
    def outcome(kind, backend, cl, rate):
        cfg = harness.Config(kind=kind, backend=backend, batch_size=8, channels_last=cl)
        return harness.Outcome(cfg, samples=[{"round": 0, "images": 8, "seconds": 1.0, "images_per_s": rate,
                                              "wait_fraction": 0.0}])
    outcomes = [outcome("train", "torchvision", False, 100.0), outcome("train", "resident", False, 400.0),
                outcome("model", "", False, 500.0), outcome("train", "torchvision", True, 50.0),
                outcome("train", "resident", True, 300.0), outcome("model", "", True, 600.0)]
    by = {r["id"]: r for r in harness.summarise(outcomes)}
    assert len(by) == 6  # the two memory formats never collide
    nchw, nhwc = by["train/resident/b8"], by["train/resident/b8/channels_last"]
    assert nchw["ratio"]["median"] == pytest.approx(4.0) and nchw["of_ceiling"]["median"] == pytest.approx(0.8)
    assert nhwc["baseline"] == "train/torchvision/b8/channels_last"
    assert nhwc["ceiling"] == "model/ceiling/b8/channels_last"
    assert nhwc["ratio"]["median"] == pytest.approx(6.0) and nhwc["of_ceiling"]["median"] == pytest.approx(0.5)


@pytest.mark.slow
def test_real_backends_loader_train_and_ceiling(small_data, tmp_path):
    common = dict(batch_size=32, workers=0, dtype="fp32", data=str(small_data))
    configs = [harness.Config(kind="loader", backend="torchvision", **common),
               harness.Config(kind="loader", backend="resident", **common),
               harness.Config(kind="train", backend="torchvision", **common),
               harness.Config(kind="train", backend="resident", **common),
               harness.Config(kind="model", **common),
               harness.Config(kind="loader", backend="resident", **{**common, "data": str(tmp_path / "missing")})]
    outcomes = harness.run(configs, repeats=1, duration=0.3, settle=1, warmup_seconds=0.1)
    records = harness.summarise(outcomes)
    by = {(r["id"], r["data"]): r for r in records}
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 5
    train = by["train/resident/b32", str(small_data)]
    assert train["ceiling"] == "model/ceiling/b32" and train["of_ceiling"]["median"] > 0
    assert 0 <= train["wait_fraction"]["median"] <= 1
    assert by["loader/resident/b32", str(small_data)]["baseline"] == "loader/torchvision/b32"
    missing = by["loader/resident/b32", str(tmp_path / "missing")]
    assert missing["status"] == "unavailable" and "alexpipe convert" in missing["reason"]


def test_cli_refuses_unconverted_data(tmp_path):
    from typer.testing import CliRunner

    from alexpipe.cli import app

    res = CliRunner().invoke(app, ["bench", "loaders", "--data", str(tmp_path)])
    assert res.exit_code == 1 and "alexpipe convert" in res.output
    res = CliRunner().invoke(app, ["bench", "nonsense", "--data", str(tmp_path)])
    assert res.exit_code == 2 and "'nonsense' is not one of 'loaders', 'train', 'overhead', 'all'" in res.output


# --- an honest ceiling: the trainer's own step, and how far it is from the chip ---

def test_a_training_step_is_counted_at_about_half_a_gigaflop_per_image():
    from alexpipe.bench.flops import training_flops_per_image

    flops = training_flops_per_image()
    # 86 M multiply-adds forward (docs/design.md): 2 FLOPs each, and a backward of about twice the forward
    assert 0.50e9 < flops < 0.53e9


def test_the_matrix_rate_is_measured_on_the_device_it_is_given():
    import torch

    from alexpipe.bench.flops import matmul_tflops

    assert matmul_tflops(torch.device("cpu"), n=128, repeats=2) > 0


def _timed(kind, backend, rate, peak=None):
    return harness.Outcome(harness.Config(kind=kind, backend=backend, batch_size=8), step="captured",
                           matmul_tflops=peak,
                           samples=[{"round": r, "images": 8, "seconds": 1.0, "images_per_s": rate,
                                     "wait_fraction": 0.0} for r in range(2)])


def test_tflops_and_the_fraction_of_the_measured_matrix_rate_are_reported_where_it_was_measured():
    outcomes = [_timed("train", "torchvision", 1e4), _timed("train", "resident", 4e4), _timed("model", "", 5e4, 800.0),
                _timed("loader", "resident", 1e6)]
    records = {r["id"]: r for r in harness.summarise(outcomes, flops_per_image=0.5e9)}
    model, loader = records["model/ceiling/b8"], records["loader/resident/b8"]
    assert model["tflops"]["median"] == pytest.approx(25.0) and model["of_peak"]["median"] == pytest.approx(25 / 800)
    assert model["step"] == "captured"
    assert records["train/resident/b8"]["tflops"]["median"] == pytest.approx(20.0)
    assert loader["tflops"] is None and loader["of_peak"] is None  # a loader alone does no training arithmetic
    doc = report.document(list(records.values()), _doc([])["settings"], harness.arithmetic(outcomes, 0.5e9))
    validate(doc)
    md = report.markdown(doc)
    assert "| TFLOP/s | of measured bf16 peak |" in md and "800 TFLOP/s" in md and "| 25.0 (25.0–25.0) | 3.1%" in md
    # no matrix rate measured (a CPU): no TFLOP/s anywhere
    cpu = [_timed("model", "", 5e4)]
    assert harness.arithmetic(cpu, 0.5e9) is None
    assert harness.summarise(cpu, flops_per_image=0.5e9)[0]["tflops"] is None
    assert "TFLOP/s" not in report.markdown(report.document(harness.summarise(cpu), _doc([])["settings"]))


@pytest.mark.parametrize("kind,compile_", [("model", True), ("train", False)])
def test_the_model_ceiling_and_train_build_the_step_train_runs_for_the_same_flags(small_data, monkeypatch, kind,
                                                                                 compile_):
    """The step comes from train.step.build_step with the trainer's arguments: compiled when asked, captured
    wherever the trainer would (None), and the record says which step that is."""
    from alexpipe.bench import worker
    from alexpipe.train import step as step_module

    built = []
    real = step_module.build_step

    def spy(*args, **kwargs):
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "build_step", spy)
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.delenv(name, raising=False)  # --compile points them at alexpipe's cache: undone after the test
    work, _, device = worker.build({"kind": kind, "backend": "resident", "batch_size": 16, "workers": 0,
                                    "dtype": "fp32", "channels_last": False, "device": "cpu", "augment": True,
                                    "pca": "blog", "data": str(small_data), "compile": compile_, "capture": None})
    assert len(built) == 1 and built[0]["compile"] is compile_ and built[0]["capture"] is None
    assert built[0]["clip_grad_norm"] == get_recipe("blog").clip_grad_norm  # the recipe's whole step
    assert work.step_kind == ("compiled" if compile_ else "eager")  # a CPU step is never captured
    assert work.min_warmup_steps == (2 if compile_ else 0)  # a compiled step compiles in its first step
    if not compile_:
        assert work() == 16 and work() == 16
