"""`alexpipe bench` against hostile or unlucky input: relative paths, folders it cannot use, numbers that never end,
a full disk, names too long, Ctrl-C and SIGTERM in the middle of a warm-up. Every refusal is one line, made before
anything is measured; an interrupt leaves no process and no temporary folder behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alexpipe.bench import harness, output, report
from alexpipe.bench.options import resolve_workers, usable_cores
from alexpipe.cli import app

import fake_worker
from conftest import one_error

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--duration", "0.2", "--repeats", "1", "--warmup", "0", "--settle", "1"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def fill(folder: Path) -> None:
    """Write into `folder` until its file system has no byte left."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    while True:  # the last partial page
        try:
            with open(folder / f"filler-{time.monotonic_ns()}", "wb", buffering=0) as f:
                f.write(b"\0")
        except OSError:
            return


# --- the options: one line naming the flag, before anything is measured ---

@pytest.mark.parametrize("flag,value", [("--duration", "nan"), ("--duration", "inf"), ("--duration", "-1"),
                                        ("--warmup", "nan"), ("--warmup", "inf"), ("--warmup", "-inf")])
def test_non_finite_or_negative_seconds_are_refused_naming_the_flag(tmp_path, flag, value):
    one_error(run("bench", "loaders", "--data", tmp_path, flag, value), flag)


def test_workers_default_to_the_usable_cores_more_are_capped_and_negative_refused(tmp_path):
    assert resolve_workers(None) == usable_cores() == len(os.sched_getaffinity(0))
    assert resolve_workers(0) == 0
    one_error(run("bench", "loaders", "--data", tmp_path, "--workers", "-1"), "--workers")
    res = run("bench", "loaders", "--data", tmp_path, "--workers", "100000")
    assert f"--workers 100000 is more than the {usable_cores()} CPU core(s)" in " ".join(res.output.split())
    one_error(res, "alexpipe convert")  # the data is checked next: the capped count went on


def test_cuda_graphs_are_refused_where_the_trainer_could_not_capture(tmp_path):
    one_error(run("bench", "train", "--data", tmp_path, "--device", "cpu", "--cuda-graphs"), "--cuda-graphs")


# --- --out: checked up front, and a write that fails is one line naming the file ---

def test_an_out_name_longer_than_a_file_system_allows_is_refused_up_front(small_data, tmp_path):
    long = tmp_path / ("x" * 300) / "results"
    line = one_error(run("bench", "loaders", "--data", small_data, "--out", long, *SHORT), "--out")
    assert "file name too long" in line and list(tmp_path.iterdir()) == []


def test_an_out_on_a_full_file_system_is_refused_up_front(small_data, small_fs):
    fs = small_fs("256k")
    fill(fs)
    line = one_error(run("bench", "loaders", "--data", small_data, "--out", fs / "out", *SHORT), "--out")
    assert "no space left on device" in line and not (fs / "out").exists()


def _fake_doc() -> dict:
    outcomes = [harness.Outcome(harness.Config(kind="loader", backend=b, batch_size=8),
                                samples=[{"round": 0, "images": 8, "seconds": 0.1, "images_per_s": 80.0,
                                          "wait_fraction": 0.0}]) for b in ("torchvision", "resident")]
    return report.document(harness.summarise(outcomes), {"repeats": 1, "duration": 0.1, "settle": 0,
                                                          "warmup_seconds": 0.0, "device": "cpu", "dtype": "fp32",
                                                          "channels_last": False, "augment": True, "pca": "blog",
                                                          "workers": 0, "batch_sizes": [8], "backends": ["x"]})


def test_a_write_that_runs_out_of_space_is_one_line_naming_the_file_and_leaves_no_temporary_file(small_fs,
                                                                                                   capsys):
    fs = small_fs("256k")
    out = fs / "out"
    out.mkdir()
    fill(fs)
    with pytest.raises(BaseException) as caught:  # typer.Exit (a click exception) from `fail`
        output.write_report(_fake_doc(), out)
    assert getattr(caught.value, "exit_code", None) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write {out / 'bench.json'}: no space left on device" in err
    assert [p.name for p in out.iterdir()] == []


# --- the data: relative paths, and backends that cannot run on this folder ---

@pytest.mark.slow
def test_a_relative_data_folder_is_read_from_the_users_working_directory(small_data, tmp_path):
    here = tmp_path / "elsewhere"
    shutil.copytree(small_data, here / "c10")
    res = subprocess.run([sys.executable, "-m", "alexpipe", "bench", "loaders", "--data", "c10", "--backends",
                          "resident", "--workers", "0", "--out", "results", *SHORT], cwd=here, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((here / "results" / "bench.json").read_text())
    assert {r["status"] for r in doc["results"]} == {"ok"}
    assert {r["data"] for r in doc["results"]} == {str(here / "c10")}


def test_a_named_backend_that_cannot_run_on_the_folder_is_refused_before_anything_is_measured(small_data,
                                                                                                tmp_path):
    """small_data was converted without .beton files: ffcv cannot read it."""
    out = tmp_path / "results"
    line = one_error(run("bench", "loaders", "--data", small_data, "--backends", "ffcv,resident", "--out", out,
                              *SHORT), "--backends ffcv")
    assert "train.beton" in line and "no such file" in line
    assert not out.exists()  # nothing was measured, nothing written


@pytest.mark.slow
def test_a_default_backend_that_cannot_run_on_the_folder_is_skipped_with_a_note(small_data, tmp_path):
    out = tmp_path / "results"
    res = subprocess.run([sys.executable, "-m", "alexpipe", "bench", "loaders", "--data", str(small_data),
                          "--workers", "0", "--out", str(out), *SHORT], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note:")]
    assert len([n for n in notes if "skipping ffcv" in n and "train.beton" in n]) == 1, res.stderr
    by = {r["backend"]: r for r in json.loads((out / "bench.json").read_text())["results"]}
    assert by["ffcv"]["status"] == "unavailable" and "train.beton" in by["ffcv"]["reason"]
    assert by["resident"]["status"] == by["torchvision"]["status"] == "ok"


@pytest.mark.slow
def test_every_configuration_is_built_before_any_is_warmed_up(tmp_path):
    """A configuration that fails to build is known before the first warm-up, and `on_built` can stop the run
    there; no worker outlives it."""
    configs = [harness.Config(kind="loader", backend=b, batch_size=8) for b in ("slow-100", "unreadable")]
    events, seen = [], []

    class Stop(Exception):
        pass

    def on_built(outcomes):
        seen.extend((o.config.backend, o.built, o.reason) for o in outcomes)
        raise Stop

    with pytest.raises(Stop):
        harness.run(configs, repeats=1, duration=0.1, warmup_seconds=30, on_event=events.append, on_built=on_built,
                    program=fake_worker.PROGRAM)
    assert seen[0] == ("slow-100", True, None)
    assert seen[1][:2] == ("unreadable", False) and "cannot read this folder" in seen[1][2]
    assert not any(e.startswith(("warming", "round")) for e in events), events
    assert _bench_workers() == []


# --- interrupts ---

def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table, found, todo = _proc_table(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _proc_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def _bench_workers() -> list[int]:
    """Benchmark workers this test process started that still run."""
    return sorted(_alive(_descendants(os.getpid())))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_during_warm_up_leaves_no_process_and_no_temporary_folder(small_data, tmp_path, signum):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # a whole minute of warm-up, with two DataLoader processes under the worker: the situation to clean up
    proc = subprocess.Popen([sys.executable, "-m", "alexpipe", "bench", "loaders", "--data", str(small_data),
                             "--backends", "torchvision", "--workers", "2", "--warmup", "60", "--duration", "0.2",
                             "--repeats", "1"], env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_alive(_descendants(proc.pid))) < 3:  # the worker and its two loader processes
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        started = _descendants(proc.pid)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)  # what Ctrl-C does: the signal goes to the terminal's foreground group
        else:
            os.kill(proc.pid, signum)  # what kill and schedulers do
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    name = signal.Signals(signum).name
    assert lines[-1].startswith(f"error: interrupted ({name}) while warming up loader/torchvision/b128"), err
    assert "Traceback" not in err
    deadline = time.monotonic() + 2
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(started) == set()
    assert [p.name for p in tmp.iterdir()] == []
