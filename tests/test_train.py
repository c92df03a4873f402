"""The training loop: it learns, resumes exactly, schedules, clips, casts, and fails safely."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexpipe.model import build_model
from alexpipe.train import checkpoint
from alexpipe.train.errors import TrainingError
from alexpipe.train.hardware import resolve_amp
from alexpipe.train.run import RunOptions, fit
from alexpipe.train.recipes import Recipe, get_recipe
from alexpipe.train.schedule import Schedule, build_optimizer
from alexpipe.train.step import build_step

from conftest import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

# A quick recipe: at the blog's lr 0.01 this network sits at ~10% for ~300 steps (LRN, dropout
# and default init start slowly), so quick tests use lr 0.05, which escapes that plateau sooner.
QUICK = dict(lr=0.05, batch_size=64, epochs=2)


def quick_run(data: Path, out: Path, loader: str = "resident", subset: int = 1000, eval_subset: int = 200,
              **changes) -> dict:
    r = get_recipe("blog").replace(**{**QUICK, "loader": loader, **changes})
    return fit(RunOptions(data=data, out=out, recipe=r, subset=subset, eval_subset=eval_subset, log_every=5))


def cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "alexpipe", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.real_data
@pytest.mark.slow
def test_short_run_on_real_data_learns(real_data, tmp_path):
    # He init learns from the first steps (PyTorch's default sits at chance for ~300 steps, which would put a
    # short run at the edge of any threshold): 3 epochs of 5,000 images reach ~0.29 val accuracy on this data
    summary = quick_run(real_data, tmp_path / "run", subset=5000, eval_subset=1000, epochs=3, lr=0.02,
                        init="kaiming")
    hist = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"]
    assert hist[-1]["val_acc"] >= 0.22 and hist[-1]["val_acc"] > hist[0]["val_acc"], hist  # chance is 0.10
    assert summary["test_acc"] >= 0.22 and summary["test_images"] == 1000


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torchvision", "dali", "ffcv"])
def test_smoke_run_with_every_other_loader(real_data, tmp_path, loader):
    summary = quick_run(real_data, tmp_path / loader, loader=loader, subset=640, eval_subset=200, epochs=1)
    assert summary["epochs"] == 1 and summary["test_images"] == 200
    (rec,) = [r for r in read_jsonl(tmp_path / loader / "metrics.jsonl") if r["type"] == "epoch"]
    assert rec["train_images"] == 640 and np.isfinite(rec["train_loss"])


@pytest.mark.real_data
@pytest.mark.slow
def test_metrics_file_and_curves_hold_what_they_claim(real_data, tmp_path):
    out = tmp_path / "run"
    summary = quick_run(real_data, out, subset=500, eval_subset=100, epochs=2)
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["type"] for r in records] == ["config", "epoch", "epoch", "test"]
    cfg, e1, e2, test = records
    assert cfg["recipe"]["lr"] == 0.05 and cfg["git_commit"] and cfg["subset"] == 500
    for r in (e1, e2):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "images_per_s",
                    "data_wait_fraction", "epoch_seconds", "wall_seconds"):
            assert key in r and np.isfinite(r[key])
        assert 0 <= r["data_wait_fraction"] <= 1 and r["train_images"] == 448  # 7 full batches of 64
    assert e2["wall_seconds"] > e1["wall_seconds"]
    assert test["test_acc"] == summary["test_acc"] and np.array(test["confusion"]).sum() == 100
    img = np.asarray(Image.open(out / "curves.png").convert("L"), dtype=float)
    assert img.shape[1] > img.shape[0] > 300 and img.std() > 10  # a real two-panel figure, not blank
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["history"][-1]["val_acc"] == e2["val_acc"]
    assert ckpt["best"]["epoch"] in (1, 2) and (out / "best.pt").exists()


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float) -> list[str]:
    """Read the process's output until a line holding `text` (the lines so far), failing on exit or timeout."""
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    seen, end = [], time.time() + timeout
    while time.time() < end:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                raise AssertionError("training exited early:\n" + "".join(seen)) from None
            continue
        seen.append(line)
        if text in line:
            return seen
    proc.kill()
    raise AssertionError(f"no line with {text!r} within {timeout} s:\n" + "".join(seen))


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
        if time.time() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(0.05)


@pytest.mark.real_data
@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run(real_data, tmp_path):
    args = ["train", "--data", real_data, "--subset", 1000, "--eval-subset", 200, "--epochs", 3, "--lr", 0.05,
            "--batch-size", 50, "--log-every", 5, "--checkpoint-every", 1]
    whole = cli(*args, "--out", tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    cut = tmp_path / "cut"
    proc = cli(*args, "--out", cut)
    # piped, the run prints a progress line at the first progress update of each epoch: step 5 of 20 here
    _wait_for_line(proc, "epoch 2  step 5/20", 600)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert checkpoint.load(cut / "last.pt")["epoch"] == 1, "the kill must land inside epoch 2"
    resumed = cli("train", "--out", cut, "--resume")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resuming" in output

    a, b = checkpoint.load(tmp_path / "whole" / "last.pt"), checkpoint.load(cut / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    timing = {"train_seconds", "images_per_s", "data_wait_fraction", "epoch_seconds", "wall_seconds",
              "mean_images_per_s", "val_seconds", "outside_seconds", "compile_seconds", "capture_seconds"}
    strip = lambda recs: [{k: v for k, v in r.items() if k not in timing} for r in recs]  # noqa: E731
    ma = [r for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl") if r["type"] in ("epoch", "test")]
    mb = [r for r in read_jsonl(cut / "metrics.jsonl") if r["type"] in ("epoch", "test")]
    assert strip(ma) == strip(mb)


@pytest.mark.real_data
@pytest.mark.slow
def test_resume_refuses_other_data_or_recipe(real_data, small_data, tmp_path):
    out = tmp_path / "run"
    quick_run(real_data, out, subset=200, eval_subset=100, epochs=1)
    r = get_recipe("blog").replace(**{**QUICK, "epochs": 2})
    with pytest.raises(TrainingError, match="recipe differs.*lr"):
        fit(RunOptions(data=real_data, out=out, recipe=r.replace(lr=0.1), subset=200, eval_subset=100,
                       resume=True))
    with pytest.raises(TrainingError, match="train data differs"):
        fit(RunOptions(data=small_data, out=out, recipe=r, subset=200, eval_subset=50, resume=True))
    with pytest.raises(TrainingError, match="already holds a run"):
        fit(RunOptions(data=real_data, out=out, recipe=r, subset=200, eval_subset=100))


@pytest.mark.real_data
@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(real_data, tmp_path):
    out = tmp_path / "run"
    # epoch 1 trains normally; then the lr jumps by 1e7 and the loss diverges in epoch 2
    r = get_recipe("blog").replace(**{**QUICK, "epochs": 3, "step_epochs": (1,), "gamma": 1e7,
                                      "clip_grad_norm": None})
    with pytest.raises(TrainingError, match="non-finite.*epoch 2"):
        fit(RunOptions(data=real_data, out=out, recipe=r, subset=200, eval_subset=100, log_every=1))
    kept = checkpoint.load(out / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch"] == [1]


@pytest.mark.real_data
@pytest.mark.slow
def test_ctrl_c_exits_cleanly_with_a_resumable_checkpoint(real_data, tmp_path):
    out = tmp_path / "run"
    proc = cli("train", "--data", real_data, "--out", out, "--subset", 1000, "--eval-subset", 200, "--epochs", 5,
               "--lr", 0.05, "--batch-size", 50, "--checkpoint-every", 1)
    _wait_for(lambda: (out / "last.pt").exists(), 600, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "--resume" in " ".join(output.split()) and "Traceback" not in output
    assert checkpoint.load(out / "last.pt")["epoch"] >= 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_blog_step_schedule_at_epochs_30_and_31():
    r = get_recipe("blog")
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, r)
    s = Schedule(opt, r, steps_per_epoch=10)
    lrs = {}
    for epoch in range(1, 33):
        lrs[epoch] = s.lr  # the lr an epoch trains with
        opt.step()  # an epoch's updates come before its end, as in the loop
        s.after_epoch(val_loss=1.0)
    assert lrs[1] == lrs[30] == pytest.approx(0.01) and lrs[31] == lrs[32] == pytest.approx(0.001)


def test_paper_plateau_schedule_divides_by_ten():
    r = get_recipe("paper")
    opt = build_optimizer(torch.nn.Linear(2, 2), r)
    s = Schedule(opt, r, steps_per_epoch=10)
    for loss in [2.0, 1.5, 1.2]:  # improving: no change
        opt.step()
        s.after_epoch(loss)
    assert s.lr == pytest.approx(0.01)
    for _ in range(r.patience + 1):  # stuck
        opt.step()
        s.after_epoch(1.2)
    assert s.lr == pytest.approx(0.001)


def test_onecycle_warms_up_then_anneals_and_resumes():
    r = get_recipe("fast").replace(epochs=4, warmup_epochs=1.0)
    opt = build_optimizer(torch.nn.Linear(2, 2), r)
    s = Schedule(opt, r, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(s.lr)
        opt.step()
        s.after_step()
    assert lrs[0] == pytest.approx(r.lr / 10) and max(lrs) == pytest.approx(r.lr) and lrs[9] == pytest.approx(r.lr)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < r.lr * 0.01
    # resumed half way from the saved state, it continues with the uninterrupted schedule's rates
    opt2 = build_optimizer(torch.nn.Linear(2, 2), r)
    s1, s2 = Schedule(build_optimizer(torch.nn.Linear(2, 2), r), r, steps_per_epoch=10), Schedule(opt2, r, 10)
    for _ in range(20):
        s1.optimizer.step()
        s1.after_step()
    opt2.load_state_dict(s1.optimizer.state_dict())  # as a resume restores both
    s2.load_state_dict(s1.state_dict())
    resumed = []
    for _ in range(20):
        resumed.append(s2.lr)
        opt2.step()
        s2.after_step()
    assert resumed == pytest.approx(lrs[20:])


def _one_step(monkeypatch, r: Recipe, amp: str):
    """Run one real training step of the CIFAR AlexNet; return (conv1 output dtype, grad norms)."""
    from alexpipe.train import loop

    seen, norms = {}, []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params, max_norm, *a, **k):
        params = list(params)
        total = real_clip(params, max_norm, *a, **k)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        norms.append((float(total), float(after)))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    torch.manual_seed(0)
    model = build_model()
    def record_dtype(module, inputs, output):
        seen.setdefault("dtype", output.dtype)  # returns None: the output is left as it is

    model.conv1.register_forward_hook(record_dtype)
    x = torch.randn(16, 3, 32, 32) * 20  # large inputs: large gradients
    y = torch.randint(0, 10, (16,))
    opt = build_optimizer(model, r)
    step = build_step(model, opt, Schedule(opt, r, 1), amp_dtype=resolve_amp(amp, torch.device("cpu")),
                      clip_grad_norm=r.clip_grad_norm)
    loop.train_epoch(loop.EpochContext(step, loop.distributed.World(), torch.device("cpu"), 1), model, [(x, y)], 1)
    return seen["dtype"], norms


def test_gradient_clipping_engages(monkeypatch):
    _, norms = _one_step(monkeypatch, get_recipe("blog"), "off")
    (before, after), = norms
    assert before > 2.0 and after == pytest.approx(2.0, rel=1e-3)
    _, norms = _one_step(monkeypatch, get_recipe("paper"), "off")
    assert norms == []  # the paper recipe does not clip


def test_amp_dtype_is_used_in_the_forward_pass(monkeypatch):
    assert _one_step(monkeypatch, get_recipe("blog"), "bf16")[0] == torch.bfloat16
    assert _one_step(monkeypatch, get_recipe("blog"), "off")[0] == torch.float32


def test_paper_inputs_are_mean_subtracted_pixels_and_wake_the_paper_init(small_data):
    """The paper recipe feeds x - mean on the 0..255 scale, the scale its N(0, 0.01) init expects."""
    from alexpipe.pipeline import load_split, make_loader
    from alexpipe.train.inputs import feed

    assert get_recipe("paper").inputs == "pixels" and get_recipe("blog").inputs == "normalised"
    split = load_split(small_data, "test")
    loader = make_loader(small_data, "test", "resident", batch_size=64, device="cpu", dtype=torch.float32)
    normalised, _ = next(iter(loader))
    raw = split.images[:64].permute(0, 3, 1, 2).double()
    mean = torch.tensor(split.meta.stats.mean, dtype=torch.float64).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = build_model(init="paper").eval()
    fed = feed(model, "pixels", split.meta.stats.std)
    assert fed.std.flatten().tolist() == pytest.approx(list(split.meta.stats.std))
    assert (normalised.double() * fed.std.double() - (raw - mean)).abs().max() < 1e-3  # exactly x - mean
    with torch.no_grad():
        spread = {name: net(normalised).double().std(0).mean().item()
                  for name, net in (("normalised", model), ("pixels", fed))}
    # on unit-scale inputs the paper init's logits barely depend on the image; on pixels they do
    assert spread["normalised"] < 1e-3 and spread["pixels"] > 30 * spread["normalised"]
    assert feed(model, "normalised", split.meta.stats.std) is model
    with pytest.raises(ValueError, match="inputs must be one of"):
        feed(model, "raw", split.meta.stats.std)


def test_cli_rejects_bad_options(tmp_path, small_data):
    from typer.testing import CliRunner

    from alexpipe.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(small_data), "--out", str(tmp_path / "r"), "--loader", "nope"])
    assert res.exit_code == 2 and "'nope' is not one of 'resident', 'dali', 'ffcv', 'torchvision'" in res.output
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert res.exit_code == 1 and "no run to resume" in res.output
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 1 and "alexpipe convert" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nothing.pt"), "--data", str(small_data)])
    assert res.exit_code == 1 and "no such checkpoint" in res.output


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_command_reports_per_class(real_data, tmp_path):
    from typer.testing import CliRunner

    from alexpipe.cli import app

    out = tmp_path / "run"
    quick_run(real_data, out, subset=200, eval_subset=100, epochs=1)
    res = CliRunner().invoke(app, ["evaluate", str(out / "best.pt"), "--data", str(real_data), "--split", "val",
                                   "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["images"] == 10_000 and np.array(got["confusion"]).sum() == 10_000
    assert set(got["per_class_acc"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                         "ship", "truck"}
    assert "top-1" in res.output


@pytest.mark.slow
def test_scale_lr_applies_the_linear_rule(small_data, tmp_path):
    from typer.testing import CliRunner

    from alexpipe.cli import app

    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["train", "--data", str(small_data), "--out", str(out), "--epochs", "1",
                                   "--batch-size", "64", "--scale-lr", "--subset", "200", "--eval-subset", "50"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"]["lr"] == pytest.approx(0.01 * 64 / 128) and cfg["recipe"]["batch_size"] == 64


def test_an_overflowing_fp16_step_is_skipped_on_the_device_and_no_lr_value_is_lost_to_a_warning():
    """The fp16 gradient scaler hands the fused SGD its inf flag: the optimiser's step still runs (and skips the
    update itself), so the schedule never sees a scheduler step before an optimiser step."""
    import warnings

    r = get_recipe("fast")  # one-cycle: the lr moves every step
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    opt = build_optimizer(net, r)
    schedule = Schedule(opt, r, steps_per_epoch=10)
    step = build_step(net, opt, schedule, amp_dtype=torch.float16, clip_grad_norm=1.0)
    # inputs of ~1e3: the fp16 forward is finite, but its backward at the scaler's first scale (65,536) is not
    x, y = torch.randn(8, 3, 2, 2) * 1e3, torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in net.parameters()]
    reference = Schedule(build_optimizer(torch.nn.Linear(2, 2), r), r, steps_per_epoch=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the lr_scheduler warning (or any other) fails the test
        step(x, y)
        assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # skipped, on the device
        assert step.scaler.get_scale() == 2.0 ** 15  # and the scale backed off
        for _ in range(60):  # the scale halves until the steps are finite, then they update
            step(x, y)
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    for _ in range(61):  # one schedule step per optimiser step, skipped ones included: no rate is lost
        reference.optimizer.step()
        reference.after_step()
    assert schedule.lr == pytest.approx(reference.lr)


@pytest.mark.slow
def test_piped_output_gets_plain_progress_lines(small_data, tmp_path):
    """With stderr not a terminal (make run | tee, nohup, CI) an epoch still shows its progress."""
    res = subprocess.run([sys.executable, "-m", "alexpipe", "train", "--data", str(small_data), "--out",
                          str(tmp_path / "r"), "--epochs", "2", "--batch-size", "64", "--log-every", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    for epoch in (1, 2):
        progress = [ln for ln in lines if ln.startswith(f"epoch {epoch}  step 1/3 ")]
        assert progress and "img/s" in progress[0] and "loss" in progress[0], lines
    assert "\x1b[" not in res.stderr and "\r" not in res.stderr  # no terminal control in a log


def test_evaluate_table_is_readable_in_80_columns():
    import io

    from rich.console import Console

    from alexpipe.train.cli import confusion_table

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    conf = [[1000 if i == j else 0 for j in range(10)] for i in range(10)]
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(confusion_table(classes, conf, [1.0] * 10))
    text = out.getvalue()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    assert "automobile" in text and "1000" in text and "100.0%" in text
