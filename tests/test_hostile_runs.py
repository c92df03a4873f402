"""`train`, `evaluate` and `bench` against hostile or unlucky input: tampered data, a user's files in --out,
signals in the middle of a checkpoint write, hand-edited run files. Every failure is one line, and nothing
trains, nothing is overwritten, nothing half-written is left behind."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alexpipe.cli import app
from alexpipe.pipeline.convert.conversion import convert
from alexpipe.pipeline.format.split import content_digest, split_path
from alexpipe.train import checkpoint

from conftest import make_source, one_error, synthetic_batches

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--log-every", "1"]


def run(*args) -> "CliRunner":
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def data(small_data, tmp_path) -> Path:
    """A private copy of the small converted dataset, free to tamper with."""
    return Path(shutil.copytree(small_data, tmp_path / "data"))


def _flip_label(path: Path, record: int) -> None:
    """Change one label in place (the last int64 of the labels tensor region is near the file's end)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        n = f.get_slice("labels").get_shape()[0]
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    begin = 8 + header_len + header["labels"]["data_offsets"][0] + 8 * (record % n)
    raw = bytearray(path.read_bytes())
    raw[begin] = (raw[begin] + 1) % 10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("tamper", ["test_over_train", "label_changed", "test_missing"])
def test_train_refuses_tampered_data_before_anything_trains(data, tmp_path, tamper):
    if tamper == "test_over_train":
        shutil.copy(split_path(data, "test"), split_path(data, "train"))
        fragment = "train.safetensors"
    elif tamper == "label_changed":
        _flip_label(split_path(data, "train"), 7)
        fragment = "train.safetensors"
    else:
        split_path(data, "test").unlink()
        fragment = "test.safetensors"
    out = tmp_path / "run"
    one_error(run("train", "--data", data, "--out", out, *QUICK), fragment)
    assert not out.exists()  # nothing trained, and no empty run folder left behind


@pytest.mark.slow
def test_a_run_records_the_digest_of_the_bytes_it_read(data, tmp_path):
    out = tmp_path / "run"
    res = run("train", "--data", data, "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    from alexpipe.pipeline import load_split

    cfg = json.loads((out / "config.json").read_text())
    for split in ("train", "val"):
        s = load_split(data, split)
        assert cfg["data_sha256"][split] == content_digest(s.images.numpy(), s.labels.numpy())


def test_train_never_writes_over_a_users_files(data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}\n')
    for force in ([], ["--force"]):
        one_error(run("train", "--data", data, "--out", mine, *QUICK, *force), "not an alexpipe run")
    assert (mine / "config.json").read_text() == '{"my": "settings"}\n' and len(list(mine.iterdir())) == 1
    one_error(run("train", "--data", data, "--out", data, *QUICK), "is the data folder")
    one_error(run("train", "--data", data, "--out", data / "runs", *QUICK), "inside it")


@pytest.mark.slow
def test_force_replaces_only_the_runs_own_files(data, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--data", data, "--out", out, *QUICK).exit_code == 0
    (out / "notes.txt").write_text("mine")
    one_error(run("train", "--data", data, "--out", out, *QUICK), "already holds a run")
    res = run("train", "--data", data, "--out", out, *QUICK, "--seed", "3", "--force")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["recipe"]["seed"] == 3
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_folder_without_val_split_trains_and_says_so(tmp_path):
    src = make_source(tmp_path, synthetic_batches(), "python", "archive")
    data = tmp_path / "noval"
    convert(src, data, val_size=0, allow_partial=True, betons=False)
    out = tmp_path / "run"
    res = run("train", "--data", data, "--out", out, *QUICK, "--epochs", "2")
    assert res.exit_code == 0, res.output
    assert "has no val split" in res.output and "best.pt is the last epoch" in " ".join(res.output.split())
    epochs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][1:3]
    assert [e["val_acc"] for e in epochs] == [None, None] and epochs[1]["train_images"] == 256
    assert checkpoint.load(out / "best.pt")["epoch"] == 2  # the last epoch
    one_error(run("train", "--data", data, "--out", tmp_path / "p", *QUICK, "--schedule", "plateau"),
                   "plateau schedule")


def _probe(*args, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PROBE_SAVE_PAUSE": str(pause)}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "probe.py"), *map(str, args)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 300) -> str:
    seen, end = [], time.time() + timeout
    while time.time() < end:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("the run ended early:\n" + "".join(seen))
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError("timed out:\n" + "".join(seen))


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_in_a_checkpoint_write_leaves_a_whole_checkpoint_and_no_temporary_file(data, tmp_path, signals):
    """One SIGTERM: the write finishes, the run stops at the next step, exit 143. A second one cuts the write
    short: its temporary file goes, the previous checkpoint stays."""
    out = tmp_path / "run"
    proc = _probe("train", "--data", data, "--out", out, *QUICK, "--epochs", "3", "--checkpoint-every", "1",
                  pause=3.0)
    _wait_for(proc, "PROBE: saving")  # epoch 1's last.pt is being written
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "interrupted (SIGTERM)" in output and "Traceback" not in output
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    if signals == 1:
        assert checkpoint.load(out / "last.pt")["epoch"] == 1 and "--resume" in output
    else:
        assert not (out / "last.pt").exists()  # the only write was cut short: nothing half-written instead
        assert "--resume" not in output and "the same command starts the run again" in output  # advice that works


@pytest.mark.slow
@pytest.mark.parametrize("config,fragment", [
    ("{not json", "not valid JSON"), ('{"type": "config"}', "no recipe"),
    ('{"type": "config", "recipe": {"lr": "fast"}}', "'lr' has the wrong type"),
])
def test_resume_with_a_hand_edited_config_is_one_line_naming_the_file(data, tmp_path, config, fragment):
    out = tmp_path / "run"
    assert run("train", "--data", data, "--out", out, *QUICK).exit_code == 0
    (out / "config.json").write_text(config)
    res = run("train", "--out", out, "--resume")
    one_error(res, fragment)
    assert "config.json" in res.output


def test_bad_recipe_values_name_their_flag(data, tmp_path):
    one_error(run("train", "--data", data, "--out", tmp_path / "a", *QUICK, "--pca-sigma", "-1"),
                   "--pca-sigma must not be negative")
    one_error(run("train", "--data", data, "--out", tmp_path / "b", *QUICK, "--seed", "-1"),
                   "--seed must be a non-negative integer")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_evaluate_refuses_bad_checkpoints_and_data_in_one_line(data, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--data", data, "--out", out, *QUICK).exit_code == 0
    good = checkpoint.load(out / "last.pt")

    def variant(name: str, **changes) -> Path:
        path = tmp_path / f"{name}.pt"
        checkpoint.save_atomic({k: v for k, v in {**good, **changes}.items() if v is not None}, path)
        return path

    shapes = {**good["model"], "fc3.weight": torch.zeros(3, 4096)}
    cases = [(variant("shape", model=shapes), "do not fit"),
             (variant("two", classes=["cat", "dog"]), "was trained on the classes"),
             (variant("norecipe", recipe=None), "no recipe")]
    for path, fragment in cases:
        one_error(run("evaluate", path, "--data", data), fragment)
    marker = tmp_path / "pwned"
    torch.save({"format": "alexpipe-checkpoint", "x": _Evil(marker)}, tmp_path / "evil.pt")
    one_error(run("evaluate", tmp_path / "evil.pt", "--data", data), "not a readable alexpipe checkpoint")
    assert not marker.exists()
    _flip_label(split_path(data, "test"), 3)
    one_error(run("evaluate", out / "last.pt", "--data", data), "test.safetensors")
    one_error(run("evaluate", tmp_path / "none.pt", "--data", data, "--json", tmp_path / "no" / "e.json"),
                   "does not exist")  # checked before anything else: no evaluation to lose


def test_paths_with_markup_are_printed_as_written(tmp_path):
    odd = tmp_path / "runs[/x] [red]r[/red]"
    res = run("train", "--data", odd / "data", "--out", odd / "run", *QUICK)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "runs[/x] [red]r[/red]" in " ".join(res.output.split())


@pytest.mark.slow
def test_bench_checks_its_output_and_data_before_measuring(data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    one_error(run("bench", "loaders", "--data", data, "--out", afile), "is not a folder")
    assert afile.read_text() == "mine"
    split_path(data, "train").write_bytes(b"\0" * 4096)
    one_error(run("bench", "loaders", "--data", data, "--duration", "0.1", "--repeats", "1"),
                   "train.safetensors")


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_previous_checkpoint(data, small_fs):
    """Room for epoch 1's last.pt (186 MB), not for epoch 2's beside it."""
    out = small_fs("300m") / "run"
    res = run("train", "--data", data, "--out", out, *QUICK, "--epochs", "2", "--checkpoint-every", "1")
    one_error(res, "no space left on device")
    assert f"cannot write {out / 'last.pt'}" in res.output, res.output
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert checkpoint.load(out / "last.pt")["epoch"] == 1  # the previous checkpoint, whole


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of torchrun's worker process of `rank` (read from its environment)."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"no rank {rank} under torchrun {parent}")


def _poll(pattern: str, text: str, timeout: float = 300) -> str:
    """The content of the file matching `pattern` (a glob) once it holds `text`."""
    end = time.time() + timeout
    while time.time() < end:
        for name in glob.glob(pattern):
            content = Path(name).read_text(errors="replace")
            if text in content:
                return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {pattern}")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_rank_killed_or_stopped_under_torchrun_leaves_the_other_one_line(data, tmp_path, how):
    """SIGKILL one rank: the other's collective fails at once; SIGSTOP it: the other's times out after
    --dist-timeout. Either way the surviving rank prints one error line, no traceback, and fails."""
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--log-dir",
           str(logs), "--redirects", "3", "-m", "alexpipe", "train", "--data", str(data), "--out",
           str(tmp_path / "run"), "--epochs", "50", "--batch-size", "50", "--lr", "0.05", "--dist-timeout", "10"]
    torchrun = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    survivor = str(logs / "*" / "attempt_0" / "0" / "stderr.log")  # rank 0's own output (--redirects)
    try:
        _poll(survivor, "epoch   1/50")
        victim = _rank_pid(torchrun.pid, 1)
        os.kill(victim, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        said = _poll(survivor, "error:", timeout=120)
        if how == "stopped":
            os.kill(victim, signal.SIGKILL)  # torchrun would wait 30 s for a stopped process to obey SIGTERM
        torchrun.communicate(timeout=120)
    finally:
        torchrun.kill()
    lines = [ln for ln in said.splitlines() if ln.strip()]
    assert torchrun.returncode != 0 and "Traceback" not in said and lines[-1].startswith("error: rank 0: "), said
    assert ("another process of this job has gone" if how == "killed" else
            "waited --dist-timeout 10 s for the other processes of this job") in lines[-1], said
