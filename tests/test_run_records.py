"""A run folder holds one run, its records say what really happened, and its hints work.

Each test builds the situation a user ran into: two runs in one folder, a first epoch that never finished,
a resumed run whose settings changed, data that moved."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexpipe.pipeline.convert.conversion import convert
from alexpipe.train import checkpoint, distributed, run as run_module
from alexpipe.train.errors import TrainingError
from alexpipe.train.folder import resume_hint
from alexpipe.train.recipes import get_recipe
from alexpipe.train.run import RunOptions, fit

from conftest import make_source, read_jsonl, synthetic_batches

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(batch_size=50, dropout=0.0)


def _fit(data: Path, out: Path, recipe="blog", **options):
    changes = {**SMALL, **options.pop("recipe_changes", {})}
    opts = dict(amp="off", log_every=100, checkpoint_every=1)
    opts.update(options)
    return fit(RunOptions(data=data, out=out, recipe=get_recipe(recipe).replace(**changes), **opts))


def _epochs(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch"]


def _cli(*args, cwd=ROOT) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "alexpipe", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_live_run_folder_refuses_a_second_run_naming_its_process_and_a_dead_ones_lock_is_taken_over(
        small_data, tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", "--data", small_data, "--out", out, "--epochs", "50", "--batch-size", "50", "--amp",
                "off", "--checkpoint-every", "1", "--dropout", "0")
    try:
        end = time.time() + 300
        while not (out / "last.pt").exists():  # it holds a run with a checkpoint: --force and --resume apply
            assert proc.poll() is None and time.time() < end, proc.stdout.read()
            time.sleep(0.1)
        for extra in ({"force": True}, {"resume": True, "force": True}, {}):
            with pytest.raises(TrainingError, match=f"another alexpipe run \\(process {proc.pid}\\) is using"):
                _fit(small_data, out, recipe_changes={"epochs": 50}, **extra)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    held = checkpoint.load(out / "last.pt")["epoch"]
    summary = _fit(small_data, out, recipe_changes={"epochs": held + 1}, resume=True)  # the dead one's lock is free
    assert summary["epochs"] == held + 1 and not (out / ".alexpipe.lock").exists()


@pytest.mark.slow
def test_a_run_whose_first_epoch_never_finished_is_started_again_by_the_same_command(small_data, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "run"
    real = run_module.train_epoch

    def crash(*args):
        raise RuntimeError("power cut")

    monkeypatch.setattr(run_module, "train_epoch", crash)
    with pytest.raises(RuntimeError):
        _fit(small_data, out, recipe_changes={"epochs": 1})
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    monkeypatch.setattr(run_module, "train_epoch", real)
    summary = _fit(small_data, out, recipe_changes={"epochs": 1})  # no --force, no --resume: it just starts
    assert summary["epochs"] == 1 and checkpoint.load(out / "last.pt")["epoch"] == 1


def test_a_failure_before_anything_is_recorded_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(Exception):
        _fit(tmp_path / "no-such-data", out, recipe_changes={"epochs": 1})
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_ctrl_c_hints_are_commands_that_work(small_data, tmp_path):
    """In the first epoch: no --resume advice. Later: a --resume command, quoted for the shell, that works."""
    out = tmp_path / "my runs" / "it's here"
    proc = _cli("train", "--data", small_data, "--out", out, "--epochs", "50", "--batch-size", "50", "--amp",
                "off", "--log-every", "1")
    time.sleep(0.5)
    while not (out / ".alexpipe.lock").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    first = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "the same command starts the run again" in first and "--resume" not in first

    proc = _cli("train", "--data", small_data, "--out", out, "--epochs", "50", "--batch-size", "50", "--amp",
                "off")
    end = time.time() + 300
    while not _epochs(out) if (out / "metrics.jsonl").exists() else True:
        assert time.time() < end and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output = " ".join(proc.communicate(timeout=120)[0].split())
    hint = output.split("continue with `")[1].split("`")[0]
    assert shlex.split(hint)[:4] == ["alexpipe", "train", "--out", str(out)], hint
    kept = checkpoint.load(out / "last.pt")["epoch"]
    resumed = _cli(*shlex.split(hint)[1:-1], "--resume", "--epochs", kept + 1)
    assert resumed.wait(300) == 0, resumed.stdout.read()


def test_the_torchrun_hint_is_a_torchrun_command(tmp_path):
    world = distributed.World(rank=0, world_size=4, local_rank=0)
    assert shlex.split(resume_hint(tmp_path / "a b", world)) == ["torchrun", "--nproc-per-node", "4", "-m",
                                                                 "alexpipe", "train", "--out", str(tmp_path / "a b"),
                                                                 "--resume"]


@pytest.mark.slow
def test_extending_a_one_cycle_run_is_refused_or_rebuilt_never_at_lr_zero(small_data, tmp_path):
    out = tmp_path / "run"
    _fit(small_data, out, recipe="fast", recipe_changes={"epochs": 1, "lr": 0.01})
    with pytest.raises(TrainingError, match="one-cycle schedule anneals the lr to 0"):
        _fit(small_data, out, recipe="fast", recipe_changes={"epochs": 3, "lr": 0.01}, resume=True)
    before = checkpoint.load(out / "last.pt")["model"]
    _fit(small_data, out, recipe="fast", recipe_changes={"epochs": 3, "lr": 0.01}, resume=True, force=True)
    epochs = _epochs(out)
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["lr"] > 0 for e in epochs[1:])
    after = checkpoint.load(out / "last.pt")["model"]
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    (resumed,) = json.loads((out / "config.json").read_text())["resumes"]
    assert resumed["after_epoch"] == 1 and resumed["changes"]["epochs"] == [1, 3]


@pytest.mark.slow
def test_forced_new_optimiser_settings_are_the_ones_used_and_recorded(small_data, tmp_path):
    out = tmp_path / "run"
    _fit(small_data, out, recipe_changes={"epochs": 1, "lr": 0.01})
    _fit(small_data, out, recipe_changes={"epochs": 2, "lr": 0.5, "momentum": 0.0}, resume=True, force=True)
    e1, e2 = _epochs(out)
    assert e1["lr"] == pytest.approx(0.01) and e2["lr"] == pytest.approx(0.5)  # used from the resumed epoch on
    ckpt = checkpoint.load(out / "last.pt")
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.0 and group["lr"] == pytest.approx(0.5)
    assert ckpt["recipe"]["lr"] == 0.5 and ckpt["recipe"]["momentum"] == 0.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resumes"][0]["changes"] == {"epochs": [1, 2], "lr": [0.01, 0.5], "momentum": [0.9, 0.0]}


@pytest.mark.slow
def test_switching_recipe_on_resume_trains_with_the_new_one(small_data, tmp_path):
    out = tmp_path / "run"
    _fit(small_data, out, recipe_changes={"epochs": 1})
    res = _cli("train", "--out", out, "--resume", "--recipe", "fast", "--epochs", "2", "--batch-size", "50",
               "--force", "--amp", "off")
    assert res.wait(300) == 0, res.stdout.read()
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt["recipe"]["name"] == "fast" and ckpt["optimizer"]["param_groups"][0]["nesterov"] is True
    assert _epochs(out)[1]["lr"] > 0.01  # the fast recipe's one-cycle lr (peak 0.08), not the blog's 0.01


@pytest.mark.slow
@pytest.mark.parametrize("change", [{"eval_subset": 20}, {"amp": "bf16"}])
def test_resuming_with_another_eval_subset_or_precision_needs_force_and_is_recorded(small_data, tmp_path, change):
    out = tmp_path / "run"
    _fit(small_data, out, recipe_changes={"epochs": 1})
    with pytest.raises(TrainingError, match="cannot resume: (the recipe|its settings) differ"):
        _fit(small_data, out, recipe_changes={"epochs": 2}, resume=True, **change)
    _fit(small_data, out, recipe_changes={"epochs": 2}, resume=True, force=True, **change)
    (resumed,) = json.loads((out / "config.json").read_text())["resumes"]
    (key,) = change
    assert key in resumed["changes"]


@pytest.mark.slow
def test_the_recorded_data_folder_works_from_anywhere_and_says_where_it_came_from(small_data, tmp_path):
    data = Path(shutil.copytree(small_data, tmp_path / "c10"))
    out = tmp_path / "run"
    first = _cli("train", "--data", "c10", "--out", "run", "--epochs", "1", "--batch-size", "50", "--amp", "off",
                 cwd=tmp_path)
    assert first.wait(300) == 0, first.stdout.read()
    assert json.loads((out / "config.json").read_text())["data"] == str(data.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = _cli("train", "--out", out, "--resume", "--epochs", "2", cwd=elsewhere)
    assert second.wait(300) == 0, second.stdout.read()
    shutil.move(data, tmp_path / "moved")
    third = _cli("train", "--out", out, "--resume", "--epochs", "3", cwd=elsewhere)
    output = third.communicate(timeout=300)[0]
    assert third.returncode == 1 and "Traceback" not in output
    assert f"the data folder recorded in {out / 'config.json'}" in " ".join(output.split())


@pytest.mark.slow
def test_a_val_split_that_appears_or_vanishes_is_refused_before_anything_is_written(small_data, tmp_path):
    no_val = tmp_path / "no-val"
    src = make_source(tmp_path, synthetic_batches(), "python", "archive")
    convert(src, no_val, val_size=0, allow_partial=True, betons=False)
    out = tmp_path / "run"
    _fit(no_val, out, recipe_changes={"epochs": 1})
    config = (out / "config.json").read_bytes()
    for force in (False, True):
        with pytest.raises(TrainingError, match="trained without a val split"):
            _fit(small_data, out, recipe_changes={"epochs": 2}, resume=True, force=force)
    assert (out / "config.json").read_bytes() == config and checkpoint.load(out / "last.pt")["epoch"] == 1


def _flip_a_bit(path: Path, tensor_name: str) -> None:
    """Flip the top exponent bit of the first element of one stored tensor, in place (a bad sector, a cosmic
    ray): torch.save keeps each tensor's bytes in its own member of the zip, which we patch byte for byte."""
    import zipfile

    ckpt = torch.load(path, weights_only=True)
    target = ckpt["model"][tensor_name].contiguous().view(torch.uint8).numpy().tobytes()[:4]
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" in info.filename and z.read(info.filename)[:4] == target:
                off = info.header_offset  # the local header's own name and extra-field lengths
                start = off + 30 + int.from_bytes(raw[off + 26:off + 28], "little") \
                    + int.from_bytes(raw[off + 28:off + 30], "little")
                assert raw[start:start + 4] == target
                raw[start + 3] ^= 0x40  # little-endian float32: the exponent's top bit
                break
        else:
            raise AssertionError("tensor not found in the archive")
    path.write_bytes(bytes(raw))


@pytest.mark.slow
def test_a_flipped_bit_in_a_checkpoint_is_one_line_for_resume_and_evaluate(small_data, tmp_path):
    out = tmp_path / "run"
    _fit(small_data, out, recipe_changes={"epochs": 1})
    _flip_a_bit(out / "last.pt", "fc1.weight")
    with pytest.raises(ValueError, match="damaged: its content does not match the digest"):
        checkpoint.load(out / "last.pt")
    with pytest.raises(ValueError, match="damaged"):
        _fit(small_data, out, recipe_changes={"epochs": 2}, resume=True)
    from typer.testing import CliRunner

    from alexpipe.cli import app

    res = CliRunner().invoke(app, ["evaluate", str(out / "last.pt"), "--data", str(small_data)])
    assert res.exit_code == 1 and "damaged" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_evaluate_says_when_the_data_is_not_the_runs_own(small_data, tmp_path):
    """Another conversion of the same source with another val seed: its val images are partly the run's training
    images. The figure is still reported, with one line saying so."""
    from typer.testing import CliRunner

    from alexpipe.cli import app

    out = tmp_path / "run"
    _fit(small_data, out, recipe_changes={"epochs": 1})
    other = tmp_path / "other"
    src = make_source(tmp_path, synthetic_batches(), "python", "archive")
    convert(src, other, val_size=50, seed=7, allow_partial=True, betons=False)
    warned = CliRunner().invoke(app, ["evaluate", str(out / "last.pt"), "--data", str(other), "--split", "val"])
    assert warned.exit_code == 0 and "top-1" in warned.output
    assert "was trained on another conversion" in " ".join(warned.output.split())
    own = CliRunner().invoke(app, ["evaluate", str(out / "last.pt"), "--data", str(small_data), "--split", "val"])
    assert own.exit_code == 0 and "note:" not in own.output
