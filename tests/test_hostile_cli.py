"""The machine and the command line against alexpipe: a full disk, names too long for the file system,
numbers that are not numbers, absurd worker counts, options that cannot work on this data. Each is one
`error:` line naming the file or the flag (never a traceback), and nothing half-written is left behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from alexpipe.atomic import WriteError, write_atomic, write_text
from alexpipe.cli import app

from conftest import CLASSES, make_source, one_error, synthetic_batches

QUICK = ["--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--log-every", "1"]


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def hidden(folder: Path) -> list[str]:
    """Temporary files (dot-names) in `folder`: a writer must never leave one."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture()
def data(small_data, tmp_path) -> Path:
    return Path(shutil.copytree(small_data, tmp_path / "data"))


def fake_checkpoint(path: Path, **changes) -> Path:
    """A checkpoint as a run writes it, untrained (no epoch needs to run for evaluate to read it)."""
    from alexpipe.model import build_model
    from alexpipe.train import checkpoint
    from alexpipe.train.recipes import Recipe

    state = {"epoch": 1, "recipe": Recipe().to_dict(), "classes": CLASSES, **changes}
    if "model" not in state:
        state["model"] = build_model("alexnet_cifar").state_dict()
    checkpoint.save_atomic(state, path)
    return path


# ---------------------------------------------------------------- the disk: one writer for every file

def _fails_with(exc: BaseException):
    def write(f) -> None:
        f.write(b"partial")
        raise exc
    return write


@pytest.mark.parametrize("exc,kind", [
    (OSError(errno.ENOSPC, "No space left on device"), WriteError),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), RuntimeError),
    (KeyboardInterrupt(), KeyboardInterrupt),
    (SystemExit(143), SystemExit),
])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, exc, kind):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(kind) as caught:
        write_atomic(target, _fails_with(exc))
    assert target.read_bytes() == b"the previous checkpoint"
    assert os.listdir(tmp_path) == ["last.pt"]
    if kind is WriteError:
        assert str(caught.value) == f"cannot write {target}: no space left on device"
        assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC


def test_a_disk_error_wrapped_by_a_library_is_still_named(tmp_path):
    """torch.save turns ENOSPC into a RuntimeError raised while handling it; safetensors into its own error
    that spells the number out. Both are the disk's failures, reported as such."""
    def torch_like(f) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    def safetensors_like(f) -> None:
        raise Exception("Error while serializing: I/O error: File name too long (os error 36)")

    for write, words in ((torch_like, "no space left on device"), (safetensors_like, "file name too long")):
        with pytest.raises(WriteError, match=words):
            write_atomic(tmp_path / "x", write)
    assert os.listdir(tmp_path) == []


def test_a_name_that_fits_writes_even_when_a_temporary_name_would_not(tmp_path):
    target = tmp_path / ("n" * 255)
    write_text(target, "whole")
    assert target.read_text() == "whole" and hidden(tmp_path) == []


def test_checkpoints_written_from_several_threads_at_once_are_whole(tmp_path):
    from alexpipe.train import checkpoint

    errors: list[BaseException] = []

    def save(k: int) -> None:
        try:
            for _ in range(3):
                checkpoint.save_atomic({"epoch": k, "model": {"w": torch.full((1000,), float(k))}, "recipe": {},
                                        "classes": []}, tmp_path / "last.pt")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and os.listdir(tmp_path) == ["last.pt"]
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert torch.equal(ckpt["model"]["w"], torch.full((1000,), float(ckpt["epoch"])))


def test_every_writer_on_a_full_disk_names_its_file_and_leaves_the_old_one(small_fs):
    """metrics, JSON, checkpoints, curves, the benchmark report: the disk fills up mid-write."""
    from alexpipe.bench.report import document, write_all
    from alexpipe.train import checkpoint
    from alexpipe.train.metrics import write_json, write_jsonl
    from alexpipe.train.plot import plot_curves

    fs = small_fs("1m")
    big = ["x" * 1000] * 2000  # 2 MB of JSON
    epochs = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5} for e in (1, 2)]
    writers = {
        "metrics.jsonl": lambda p: write_jsonl(p, [{"a": s} for s in big]),
        "summary.json": lambda p: write_json(p, big),
        "last.pt": lambda p: checkpoint.save_atomic({"model": {"w": torch.zeros(1 << 20)}}, p),
    }
    for name, write in writers.items():
        (fs / name).write_text("before")
        with pytest.raises(WriteError) as caught:
            write(fs / name)
        assert str(caught.value) == f"cannot write {fs / name}: no space left on device"
        assert (fs / name).read_text() == "before" and hidden(fs) == []
    _fill(fs)
    with pytest.raises(WriteError, match="curves.png: no space left on device"):
        plot_curves(epochs, fs / "curves.png")
    with pytest.raises(WriteError, match="bench.json: no space left on device"):
        write_all(document([], {"repeats": 1, "duration": 1.0, "device": "cpu", "dtype": "bf16", "channels_last": False,
                                "augment": True, "pca": "blog", "workers": 2}), fs / "bench")
    assert hidden(fs) == [] and hidden(fs / "bench") == []


def _fill(folder: Path) -> None:
    """Take every free byte of `folder`'s file system."""
    with open(folder / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError) as full:
            while True:
                f.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


def test_download_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, small_fs):
    big = tmp_path / "cifar-10-python.tar.gz"
    big.write_bytes(os.urandom(3 << 20))
    cache = small_fs("1m")
    res = run("convert", "--download", "--url", big.as_uri(), "--download-dir", cache, "--out", tmp_path / "out")
    one_error(res, f"cannot write {cache / big.name}: no space left on device")
    assert os.listdir(cache) == [] and not (tmp_path / "out").exists()


def test_convert_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, small_fs):
    src = make_source(tmp_path, synthetic_batches(), "python", "archive")
    fs = small_fs("512k")
    res = run("convert", "--source", src, "--out", fs / "c10", "--allow-partial", "--val-size", "50",
              "--no-beton")
    one_error(res, f"cannot write {fs / 'c10' / 'train.safetensors'}: no space left on device")
    assert os.listdir(fs) == []  # no temporary folder, no lock, no half conversion


def test_evaluate_json_onto_a_full_disk_is_one_line(data, tmp_path, small_fs):
    ckpt = fake_checkpoint(tmp_path / "last.pt")
    fs = small_fs("64k")
    _fill(fs)
    one_error(run("evaluate", ckpt, "--data", data, "--json", fs / "e.json"),
              f"--json: cannot write {fs / 'e.json'}: no space left on device")
    assert sorted(os.listdir(fs)) == ["filler"]


# ---------------------------------------------------------------- names the file system will not take

LONG = "n" * 300  # one name over the 255-byte limit
DEEP = "/".join(["d" * 200] * 21)  # a path over the 4,096-byte limit, every name within it


@pytest.mark.parametrize("args,flag", [
    (["train", "--data", "{data}", "--out", LONG, *QUICK], "--out"),
    (["train", "--data", "{data}", "--out", DEEP, *QUICK], "--out"),
    (["train", "--data", LONG, "--out", "run", *QUICK], "--data"),
    (["evaluate", LONG, "--data", "{data}"], "CHECKPOINT"),
    (["evaluate", "{ckpt}", "--data", DEEP], "--data"),
    (["evaluate", "{ckpt}", "--data", "{data}", "--json", LONG], "--json"),
    (["info", LONG], "DATA"),
    (["info", DEEP], "DATA"),
    (["convert", "--source", "{src}", "--out", LONG, "--allow-partial"], "--out"),
    (["convert", "--source", "{src}", "--out", "c" * 250, "--allow-partial"], "--out"),  # no room for its temp
    (["convert", "--source", LONG, "--out", "c10"], "--source"),
    (["convert", "--download", "--download-dir", LONG, "--out", "c10"], "--download-dir"),
])
def test_names_too_long_for_the_file_system_are_one_line_naming_the_flag(data, tmp_path, monkeypatch, args, flag):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")  # never read: the name is refused first
    places = {"data": data, "ckpt": tmp_path / "last.pt",
              "src": make_source(tmp_path, synthetic_batches(), "python", "archive")}
    res = run(*[a.format(**places) for a in args])
    line = one_error(res, f"error: {flag} ", "file name too long")
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-python.tar.gz", "data", "last.pt"], line  # nothing made


def test_a_dangling_symbolic_link_as_out_is_explained(data, tmp_path):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone" / "run")
    one_error(run("train", "--data", data, "--out", link, *QUICK),
              f"--out {link} is a symbolic link to {tmp_path / 'gone' / 'run'}, which does not exist")
    assert link.is_symlink() and not (tmp_path / "gone").exists()


# ---------------------------------------------------------------- numbers that are not numbers

@pytest.mark.parametrize("option,value,message", [
    ("--subset", "0", "--subset must be a positive number of images"),
    ("--eval-subset", "0", "--eval-subset must be a positive number of images"),
    ("--lr", "nan", "--lr must be a finite number, got nan"),
    ("--lr", "inf", "--lr must be a finite number, got inf"),
    ("--momentum", "nan", "--momentum must be a finite number"),
    ("--weight-decay", "inf", "--weight-decay must be a finite number"),
    ("--gamma", "inf", "--gamma must be a finite number"),
    ("--warmup-epochs", "inf", "--warmup-epochs must be a finite number"),
    ("--clip-grad-norm", "-inf", "--clip-grad-norm must be a finite number"),
    ("--clip-grad-norm", "nan", "--clip-grad-norm must be a finite number"),
    ("--dropout", "nan", "--dropout must be a finite number"),
    ("--label-smoothing", "nan", "--label-smoothing must be a finite number"),
    ("--pca-sigma", "nan", "--pca-sigma must be a finite number"),
    ("--pca-sigma", "inf", "--pca-sigma must be a finite number"),
    ("--dist-timeout", "inf", "--dist-timeout must be a number of seconds above 0"),
    ("--dist-timeout", "nan", "--dist-timeout must be a number of seconds above 0"),
    ("--dist-timeout", "1e300", "--dist-timeout must be a number of seconds above 0"),
    ("--seed", str(2 ** 64), "--seed must be below 2**32"),
])
def test_numbers_a_run_cannot_use_are_refused_naming_their_flag(data, tmp_path, option, value, message):
    schedule = ["--schedule", "onecycle"] if option == "--warmup-epochs" else []
    one_error(run("train", "--data", data, "--out", tmp_path / "run", *QUICK, *schedule, option, value), message)
    assert not (tmp_path / "run").exists()


def test_evaluate_names_its_batch_size_flag(data, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")  # never read: the flag is refused first
    one_error(run("evaluate", tmp_path / "last.pt", "--data", data, "--batch-size", "0"),
              "--batch-size must be positive, got 0")


def test_a_batch_that_does_not_divide_among_the_processes_names_its_flag(data, tmp_path, monkeypatch):
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    one_error(run("train", "--data", data, "--out", tmp_path / "run", *QUICK, "--batch-size", "7"),
              "--batch-size 7 does not divide among 2 processes")


# ---------------------------------------------------------------- what the machine can hold

def test_worker_counts_beyond_the_cores_are_capped_and_negative_ones_refused(data, tmp_path, monkeypatch):
    from alexpipe.pipeline.loaders.workers import check_workers, usable_cores

    cores = usable_cores()
    assert check_workers(0) == (0, None) and check_workers(cores) == (cores, None)
    seen = {}  # what the run would be given: the CLI alone decides it, so no run needs to start
    monkeypatch.setattr("alexpipe.train.run.fit", lambda opt: seen.update(workers=opt.num_workers))
    res = run("train", "--data", data, "--out", tmp_path / "run", *QUICK, "--loader", "torchvision",
              "--workers", "1000")
    assert res.exit_code == 0, res.output
    assert seen["workers"] == cores
    assert f"note: --workers 1000 is more than the {cores} CPU core(s) this process may use: using {cores}" \
        in res.output
    one_error(run("train", "--data", data, "--out", tmp_path / "run", *QUICK, "--workers", "-3"),
              "--workers must not be negative, got -3")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert check_workers(8, "--threads") == (3, "--threads 8 is more than the 3 CPU core(s) this process may use: "
                                                "using 3")


def test_fp16_on_a_cpu_says_at_the_start_that_it_is_slow(data, tmp_path, monkeypatch):
    """Said before the first step: nothing needs to run (which would take 40 times as long) to see it."""
    from alexpipe.train.errors import TrainingError

    def stop(run_):
        raise TrainingError("stopped before anything trains")

    monkeypatch.setattr("alexpipe.train.run.prepare_out", stop)
    monkeypatch.setattr("alexpipe.train.loop.evaluate", lambda *a, **k: {
        "confusion": [[0] * 10] * 10, "images": 0, "top1": 0.0, "top5": 0.0, "loss": 0.0})
    slow = "note: --amp fp16 on a CPU is many times slower than --amp bf16 or off"
    ckpt = fake_checkpoint(tmp_path / "last.pt")
    for args in (["train", "--data", data, "--out", tmp_path / "run", *QUICK], ["evaluate", ckpt, "--data", data]):
        fp16 = run(*args, "--device", "cpu", "--amp", "fp16")
        assert fp16.output.count(slow) == 1, fp16.output
        assert slow not in run(*args, "--device", "cpu", "--amp", "bf16").output


# ---------------------------------------------------------------- one clear line instead of a traceback

def fake_run(out: Path, data: Path, changes: dict | None = None) -> Path:
    """A run folder as a finished epoch leaves it (config.json, last.pt), with `changes` made to its last.pt
    (`...`: the part removed) as a hand edit would."""
    from alexpipe.train import checkpoint
    from alexpipe.train.recipes import Recipe

    out.mkdir()
    recipe = Recipe(epochs=2, batch_size=64, lr=0.05).to_dict()
    (out / "config.json").write_text(json.dumps({"type": "config", "recipe": recipe, "data": str(data)}))
    fake_checkpoint(out / "last.pt", recipe=recipe, model={"w": torch.zeros(1)})  # refused before it is used
    state = {**checkpoint.load(out / "last.pt"), "optimizer": {"state": {}, "param_groups": []}, "schedule": {},
             "rng": checkpoint.rng_state(), "data": {}, "history": [], "best": {"val_acc": 0.0, "epoch": 1}}
    checkpoint.save_atomic({k: v for k, v in {**state, **(changes or {})}.items() if v is not ...}, out / "last.pt")
    return out


def test_the_imagenet_alexnet_is_not_offered_for_32x32_images(data, tmp_path):
    assert "alexnet|" not in run("train", "--help").output and "|alexnet>" not in run("train", "--help").output
    needs = "--model alexnet is the 2012 ImageNet network: it needs 224x224 inputs"
    one_error(run("train", "--data", data, "--out", tmp_path / "run", *QUICK, "--model", "alexnet"), needs)
    assert not (tmp_path / "run").exists()
    out = fake_run(tmp_path / "old", data)
    one_error(run("train", "--out", out, "--resume", "--force", "--model", "alexnet"), needs)
    from alexpipe.train.recipes import Recipe

    ckpt = fake_checkpoint(tmp_path / "imagenet.pt", recipe=Recipe(model="alexnet").to_dict(),
                           model={"w": torch.zeros(1)})  # refused before its weights are read
    one_error(run("evaluate", ckpt, "--data", data), f"{ckpt}: --model alexnet is the 2012 ImageNet network")


@pytest.mark.parametrize("edit,fragment", [
    ({"rng": ...}, "not a complete alexpipe checkpoint (no rng)"),
    ({"data": None}, "not a usable alexpipe checkpoint (its data is None, not a dict)"),
    ({"data": [1, 2]}, "its data is [1, 2], not a dict"),
    ({"epoch": "1"}, "its epoch is '1', not an int"),
    ({"rng": 7}, "its rng is 7, not a dict or list"),
])
def test_resuming_a_hand_edited_checkpoint_is_one_line(data, tmp_path, edit, fragment):
    out = fake_run(tmp_path / "run", data, edit)
    before = (out / "last.pt").read_bytes()
    one_error(run("train", "--out", out, "--resume"), f"{out / 'last.pt'}: ", fragment)
    assert (out / "last.pt").read_bytes() == before


def test_unreadable_checkpoints_are_one_whole_sentence_without_unsafe_advice(data, tmp_path):
    import fractions
    import pickle

    good = fake_checkpoint(tmp_path / "good.pt", model={"w": torch.zeros(1 << 16)})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100_000])
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"format": "alexpipe-checkpoint"}))
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "alexpipe-checkpoint", "x": fractions.Fraction(1, 2)}, foreign)
    cases = [(cut, "failed finding central directory)"), (pickled, "not a file torch.save writes"),
             (foreign, "holds objects other than tensors and plain values, which are never loaded: Unsupported "
                       "global: GLOBAL fractions.Fraction was not an allowed global by default)")]
    for path, fragment in cases:
        line = one_error(run("evaluate", path, "--data", data), f"error: {path}: not ", fragment)
        assert "weights_only" not in line and "trust" not in line and "Warning" not in line and "\\x1b" not in line
