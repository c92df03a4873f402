"""Trust nothing on disk: tampered conversions, hostile archives, dangerous --out, interruptions.

Every hostile input is built here. Each failure must be one `error:` line
(never a traceback), a non-zero exit, and leave --out and the source untouched.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alexpipe.cli import app
from alexpipe.pipeline import DataError, load_split
from alexpipe.pipeline.convert.conversion import convert
from alexpipe.pipeline.format.split import content_digest, split_path
from alexpipe.pipeline.hashing import file_hexdigests
from alexpipe.pipeline.format.integrity import verify_dataset
from alexpipe.pipeline.source.archives import MAX_BATCH_BYTES
from alexpipe.terminal import literal

from conftest import CLASSES, ROOT, make_source, one_error, source_files, write_archive

runner = CliRunner()
SPLITS = ("train", "val", "test")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: file_hexdigests(p, "sha256")[0] for p in sorted(folder.iterdir()) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    """Temporary folders and lock files of conversions into parent/name."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture
def src(tmp_path, synthetic) -> Path:
    return make_source(tmp_path, synthetic, "python", "archive")


def converted(tmp_path: Path, src: Path, name: str = "data", betons: bool = False) -> Path:
    out = tmp_path / name
    convert(src, out, val_size=50, allow_partial=True, betons=betons)
    return out


# ---------------------------------------------------------------- editing a converted folder

def read_header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_header(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def edit_metadata(path: Path, **changes: object) -> None:
    """Set metadata fields (JSON values) of a split file in place, keeping its data."""
    header, body = read_header(path)
    for k, v in changes.items():
        header["__metadata__"][k] = json.dumps(v)
    write_header(path, header, body)


def edit_manifest(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m = fn(m)
    (root / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))


def _swap(root: Path) -> None:
    a, b = split_path(root, "train"), split_path(root, "test")
    a.rename(root / "x")
    b.rename(a)
    (root / "x").rename(b)


def _relabel_keeping_counts(root: Path) -> None:
    """Swap the labels of two images of different classes: counts unchanged, content changed."""
    path = split_path(root, "test")
    header, body = read_header(path)
    b, _ = header["labels"]["data_offsets"]
    labels = np.frombuffer(body[b:b + 8 * 60], "<i8").copy()
    j = int(np.flatnonzero(labels != labels[0])[0])
    labels[[0, j]] = labels[[j, 0]]
    body = body[:b] + labels.tobytes() + body[b + 8 * 60:]
    write_header(path, header, body)


def _rename_classes_everywhere(root: Path) -> None:
    renamed = ["plane"] + CLASSES[1:]
    for s in SPLITS:
        edit_metadata(split_path(root, s), classes=renamed)


TAMPERING = {
    # case: (how, fragment of the one error line)
    "split file missing": (lambda r: split_path(r, "test").unlink(), "test.safetensors: listed in the manifest but missing"),
    "files swapped": (_swap, "holds the 'test' split, not 'train'"),
    "file copied over another": (lambda r: shutil.copy(split_path(r, "val"), split_path(r, "test")),
                                 "holds the 'val' split, not 'test'"),
    "labels changed in place": (_relabel_keeping_counts, "test.safetensors: content does not match its recorded sha256"),
    "manifest digest wrong": (lambda r: edit_manifest(r, lambda m: {**m, "files": {
        **m["files"], "val.safetensors": {**m["files"]["val.safetensors"], "content_sha256": "0" * 64}}}),
        "val.safetensors: content_sha256"),
    "mean NaN": (lambda r: edit_metadata(split_path(r, "train"), mean=[float("nan"), 120.0, 110.0]),
                 "mean (nan, 120, 110) is not finite"),
    "std 0": (lambda r: edit_metadata(split_path(r, "val"), std=[0, 60.0, 60.0]), "std (0, 60, 60) is outside (0, 128]"),
    "mean above 255": (lambda r: edit_metadata(split_path(r, "train"), mean=[300, 120, 110]), "is outside 0..255"),
    "negative eigenvalue": (lambda r: edit_metadata(split_path(r, "train"), pca_eigenvalues=[11000, 900, -1]),
                            "are not non-negative and descending"),
    "eigenvectors not orthonormal": (lambda r: edit_metadata(split_path(r, "train"),
                                                             pca_eigenvectors=[[1, 0, 0], [1, 0, 0], [0, 0, 1]]),
                                     "eigenvectors are not orthonormal"),
    "classes renamed in one file": (lambda r: edit_metadata(split_path(r, "val"), classes=["plane"] + CLASSES[1:]),
                                    "val.safetensors: classes ('plane', 'automobile',"),
    "classes renamed in every file": (_rename_classes_everywhere, "differ from the manifest"),
    "classes not distinct": (lambda r: edit_metadata(split_path(r, "test"), classes=["cat"] * 10),
                             "are not 10 distinct names"),
    "count disagrees with shape": (lambda r: edit_metadata(split_path(r, "test"), num_images=59,
                                                           class_counts=[5] * 9 + [14]),
                                   "but the metadata records 59 images"),
    "manifest not an object": (lambda r: edit_manifest(r, lambda m: [m]), "a JSON list, not the object"),
    "manifest without format": (lambda r: edit_manifest(r, lambda m: {k: v for k, v in m.items() if k != "format"}),
                                "format None, expected 'alexpipe-cifar10'"),
    "manifest files null": (lambda r: edit_manifest(r, lambda m: {**m, "files": None}), "'files' is None"),
    "manifest not JSON": (lambda r: edit_manifest(r, lambda m: "{not json"), "manifest.json: not valid JSON"),
    "manifest names an absolute path": (lambda r: edit_manifest(r, lambda m: {**m, "files": {
        **m["files"], "/etc/shadow": {"split": "test", "num_images": 1, "sha256": "0" * 64}}}),
        "file name '/etc/shadow' is not a plain name inside the folder"),
    "manifest names a parent path": (lambda r: edit_manifest(r, lambda m: {**m, "files": {
        **m["files"], "../train.beton": {"split": "train", "num_images": 1, "sha256": "0" * 64}}}),
        "file name '../train.beton' is not a plain name"),
    "manifest names an unknown file": (lambda r: edit_manifest(r, lambda m: {**m, "files": {
        **m["files"], "zero": {"split": "test", "num_images": 1, "sha256": "0" * 64}}}), "records 'zero' as split"),
    "split file is a link out of the folder": (
        lambda r: (shutil.copy(split_path(r, "test"), r.parent / "elsewhere"), split_path(r, "test").unlink(),
                   split_path(r, "test").symlink_to(r.parent / "elsewhere")),
        "a symbolic link to"),
    "header without data_offsets": (lambda r: _edit_tensor(r, "labels", data_offsets=None),
                                    "tensor 'labels' has data_offsets None"),
    "shape is a string": (lambda r: _edit_tensor(r, "images", shape="(60, 32, 32, 3)"),
                          "tensor 'images' has shape '(60, 32, 32, 3)', not a list of sizes"),
    "negative offsets": (lambda r: _edit_tensor(r, "labels", data_offsets=[-480, 0]), "has data_offsets [-480, 0]"),
    "huge offsets": (lambda r: _edit_tensor(r, "source_index", data_offsets=[2 ** 62, 2 ** 62 + 480]),
                     "runs past the end of the file"),
    "dtype changed": (lambda r: _edit_tensor(r, "labels", dtype="I32"), "tensor 'labels' missing or not I64"),
    "unlisted split file": (lambda r: (edit_manifest(r, lambda m: {**m, "files": {
        k: v for k, v in m["files"].items() if k != "val.safetensors"}})), "lists no val.safetensors"),
}


def _edit_tensor(root: Path, name: str, **changes: object) -> None:
    path = split_path(root, "test")
    header, body = read_header(path)
    header[name].update(changes)
    write_header(path, header, body)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from conftest import synthetic_batches

    tmp = tmp_path_factory.mktemp("pristine")
    return converted(tmp, make_source(tmp, synthetic_batches(), "python", "archive"))


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_dataset_and_info_catch_tampering(tmp_path, pristine, case):
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    assert run("info", root).exit_code == 0
    how, fragment = TAMPERING[case]
    how(root)
    with pytest.raises(DataError) as err:
        verify_dataset(root, SPLITS)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    res = run("info", root)
    line = one_error(res, fragment)
    assert "integrity: ok" not in res.output
    assert str(root) in line or "unknown split" in line


def test_verify_dataset_returns_the_digests_of_what_it_read(tmp_path, pristine):
    digests = verify_dataset(pristine, SPLITS)
    for s in SPLITS:
        split = load_split(pristine, s)
        assert digests[s] == content_digest(split.images.numpy(), split.labels.numpy())
    assert verify_dataset(pristine, ["test"], content=False) == {"test": digests["test"]}
    with pytest.raises(DataError, match="unknown split"):
        verify_dataset(pristine, ["nope"])


@pytest.mark.parametrize("special", ["fifo", "dev_zero_link", "manifest_link_to_shadow"])
def test_special_files_are_refused_without_reading(tmp_path, pristine, special):
    """A FIFO would block open(), /dev/zero never ends, /etc/shadow is not ours: refused before any read."""
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    if special == "fifo":
        split_path(root, "test").unlink()
        os.mkfifo(split_path(root, "test"))
        fragment = "test.safetensors: not a regular file"
    elif special == "dev_zero_link":
        split_path(root, "test").unlink()
        split_path(root, "test").symlink_to("/dev/zero")
        fragment = "a symbolic link to /dev/zero"
    else:
        (root / "manifest.json").unlink()
        (root / "manifest.json").symlink_to("/etc/shadow")
        fragment = "a symbolic link to /etc/shadow"
    # in a child process with a time limit: a regression here hangs rather than fails
    res = subprocess.run([sys.executable, "-c", CLI, "info", str(root)], capture_output=True, text=True,
                         timeout=120, env=child_env())
    assert res.returncode == 1, res.stderr
    assert fragment in res.stderr and "Traceback" not in res.stderr and "integrity: ok" not in res.stdout


@pytest.mark.ffcv
@pytest.mark.slow
def test_info_checks_beton_checksums(tmp_path, src):
    root = converted(tmp_path, src, betons=True)
    assert "integrity: ok" in run("info", root).output
    with open(root / "val.beton", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    one_error(run("info", root), "val.beton: sha256 differs from the manifest")
    (root / "val.beton").unlink()
    one_error(run("info", root), "val.beton: listed in the manifest but missing")


def test_load_split_refuses_malformed_headers_in_one_line(tmp_path, pristine):
    for change, fragment in ((dict(data_offsets=None), "data_offsets None"), (dict(shape="60"), "has shape '60'"),
                             (dict(data_offsets=[2 ** 70, 2 ** 70 + 480]), "runs past the end")):
        root = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        shutil.copytree(pristine, root)
        _edit_tensor(root, "labels", **change)
        with pytest.raises(DataError, match="test.safetensors") as err:
            load_split(root, "test")
        assert fragment in str(err.value)
    root = tmp_path / "nan"
    shutil.copytree(pristine, root)
    edit_metadata(split_path(root, "train"), std=[float("inf"), 1, 1])
    with pytest.raises(DataError, match="implausible statistics"):
        load_split(root, "train")


# ---------------------------------------------------------------- --out and --force

def test_force_never_replaces_the_source(tmp_path, synthetic):
    dl = tmp_path / "dl"
    dl.mkdir()
    archive = make_source(dl, synthetic, "python", "archive")
    before = snapshot(dl)
    one_error(run("convert", "--source", archive, "--out", dl, "--force", "--allow-partial", "--val-size", "50"),
              "holds the source")
    assert snapshot(dl) == before
    folder = make_source(tmp_path, synthetic, "binary", "folder")
    before = snapshot(folder / "cifar-10-batches-bin")
    for out, fragment in ((folder, "holds the source"), (folder / "out", "lies inside the source folder"),
                          (folder / "cifar-10-batches-bin", "lies inside the source folder")):
        one_error(run("convert", "--source", folder, "--out", out, "--force", "--allow-partial"), fragment)
    assert snapshot(folder / "cifar-10-batches-bin") == before and not (folder / "out").exists()


def test_force_replaces_only_a_conversion(tmp_path, src):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    one_error(run("convert", "--source", src, "--out", mine, "--force", "--allow-partial", "--val-size", "50",
                  "--no-beton"), "is not empty and is not a conversion")
    assert (mine / "thesis.tex").read_text() == "years of work"
    out = converted(tmp_path, src, "out")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    one_error(run("convert", "--source", src, "--out", out, "--force", "--allow-partial", "--val-size", "50",
                  "--no-beton"), "holds files `alexpipe convert` did not write (notes.txt)")
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    res = run("convert", "--source", src, "--out", out, "--force", "--allow-partial", "--val-size", "0", "--no-beton")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.safetensors", "train.safetensors"]
    assert leftovers(tmp_path, "out") == []  # no temp folder, no lock file


def test_out_dot_is_refused_in_one_line(tmp_path, src, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", ".."):
        one_error(run("convert", "--source", src, "--out", out, "--force", "--allow-partial", "--no-beton"),
                  "is the current folder")
    assert list(here.iterdir()) == [] and src.exists()


# ---------------------------------------------------------------- child processes: lock, Ctrl-C, kill -9

# The pipeline's two commands as a program; argv: [--pause-beton READY | --pause-write READY GO] convert ...
CLI = r"""
import pathlib, sys, time
import typer
from alexpipe.pipeline import cli
from alexpipe.pipeline.convert import conversion as convert
from alexpipe.pipeline.format import beton

args = sys.argv[1:]
if args[0] == "--pause-beton":  # sit in the middle of writing a .beton until a signal arrives
    ready, args = pathlib.Path(args[1]), args[2:]
    def paused(f, images, page_size):
        ready.touch()
        while True:
            time.sleep(0.05)
    beton._write_page = paused
elif args[0] == "--pause-write":  # wait, before writing anything, until GO exists
    ready, go, args = pathlib.Path(args[1]), pathlib.Path(args[2]), args[3:]
    original = convert._write_all
    def waiting(*a, **k):
        ready.touch()
        while not go.exists():
            time.sleep(0.05)
        return original(*a, **k)
    convert._write_all = waiting
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
cli.register(app)
app(args, prog_name="alexpipe")
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def start(*args: object, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(), **kw)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until `path` exists (the child reached its pause point); fail if the child ends first."""
    for _ in range(1200):
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"child ended with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("child never reached its pause point")


def test_a_second_conversion_into_the_same_out_is_refused(tmp_path, src):
    out = tmp_path / "out"
    first = start("--pause-write", tmp_path / "ready", tmp_path / "go", "convert", "--source", src, "--out", out,
                  "--allow-partial", "--val-size", "50", "--no-beton")
    try:
        wait_for(tmp_path / "ready", first)
        second = run("convert", "--source", src, "--out", out, "--allow-partial", "--val-size", "50", "--no-beton")
        one_error(second, f"another conversion (process {first.pid}) is writing to {out}")
    finally:
        (tmp_path / "go").touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert len(load_split(out, "train")) == 250 and leftovers(tmp_path, "out") == []


def test_a_held_lock_refuses_at_once_and_leaves_out_alone(tmp_path, src):
    out = converted(tmp_path, src, "out")
    before = snapshot(out)
    with open(tmp_path / ".out.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        one_error(run("convert", "--source", src, "--out", out, "--force", "--allow-partial", "--val-size", "50",
                      "--no-beton"), "another conversion (process ")
    assert snapshot(out) == before


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.ffcv
@pytest.mark.slow
def test_ctrl_c_while_writing_betons_stops_cleans_up_and_exits_130(tmp_path, src):
    out = converted(tmp_path, src, "out")
    before = snapshot(out)
    proc = start("--pause-beton", tmp_path / "ready", "convert", "--source", src, "--out", out, "--force",
                 "--allow-partial", "--val-size", "50", "--beton")
    wait_for(tmp_path / "ready", proc)
    assert leftovers(tmp_path, "out")  # its temporary folder and lock exist while it writes
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # a hang is a failure, not a wait
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["error: interrupted: --out was left as it was and the temporary files were removed"], err
    assert snapshot(out) == before and leftovers(tmp_path, "out") == []


@pytest.mark.ffcv
@pytest.mark.slow
def test_kill_9_while_writing_betons_leaves_no_process_and_the_next_run_cleans_up(tmp_path, src):
    out = converted(tmp_path, src, "out")
    before, shm_before = snapshot(out), shm()
    proc = start("--pause-beton", tmp_path / "ready", "convert", "--source", src, "--out", out, "--force",
                 "--allow-partial", "--val-size", "50", "--beton")
    wait_for(tmp_path / "ready", proc)
    below = descendants(proc.pid)
    proc.kill()
    proc.wait(timeout=60)
    for _ in range(100):  # children told of their parent's death exit within moments
        if not any(alive(p) for p in below):
            break
        time.sleep(0.05)
    assert not [p for p in below if alive(p)], "processes outlived the killed conversion"
    assert shm() - shm_before == set()  # no shared-memory segment left
    stale = [n for n in leftovers(tmp_path, "out") if n.startswith(f".out.tmp-{proc.pid}-")]
    assert stale and snapshot(out) == before
    # someone else's folder that merely looks like a temporary one is kept
    lookalike = tmp_path / f".out.tmp-{proc.pid}-mine"
    lookalike.mkdir()
    (lookalike / "keep.txt").write_text("not alexpipe's")
    res = run("convert", "--source", src, "--out", out, "--force", "--allow-partial", "--val-size", "50",
              "--no-beton")
    assert res.exit_code == 0, res.output
    assert leftovers(tmp_path, "out") == [lookalike.name] and (lookalike / "keep.txt").exists()


def test_stale_temp_folders_of_live_processes_are_kept(tmp_path, src):
    out = tmp_path / "out"
    live = tmp_path / f".out.tmp-{os.getppid()}-abc"  # the parent of this process is alive
    live.mkdir()
    (live / ".alexpipe-tmp").write_text("")
    convert(src, out, val_size=50, allow_partial=True, betons=False)
    assert live.exists()


# ---------------------------------------------------------------- hostile archives

def _archive_declaring(path: Path, members: dict[str, int | bytes], top: str = "cifar-10-batches-py") -> Path:
    """A tar.gz whose members are given bytes, or that many zero bytes (compressing to almost nothing)."""
    class Zeros(io.RawIOBase):
        def __init__(self, n: int):
            self.left = n

        def readinto(self, b) -> int:
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = data if isinstance(data, int) else len(data)
            tar.addfile(info, Zeros(data) if isinstance(data, int) else io.BytesIO(data))
    return path


def test_decompression_bomb_is_refused_by_declared_size_before_reading(tmp_path, synthetic):
    _, files = source_files(synthetic, "python")
    over = MAX_BATCH_BYTES + 1
    cases = {
        "batch": ({**files, "data_batch_1": over}, f"data_batch_1: declares {over:,} bytes, more than a "
                                                   f"CIFAR-10 batch can hold ({MAX_BATCH_BYTES:,})"),
        "meta": ({**files, "batches.meta": 2 << 20}, "batches.meta: declares 2,097,152 bytes, more than a CIFAR-10 "
                                                     "meta file can hold"),
        "other member": ({**files, "readme.html": over}, f"readme.html: declares {over:,} bytes"),
    }
    for case, (members, fragment) in cases.items():
        bomb = _archive_declaring(tmp_path / f"{case}.tar.gz", members)
        one_error(run("convert", "--source", bomb, "--out", tmp_path / "out", "--allow-partial", "--no-beton"),
                  fragment)
        assert not (tmp_path / "out").exists()


def test_bombs_in_tar_headers_and_member_counts_are_refused(tmp_path, synthetic):
    top, files = source_files(synthetic, "python")
    pax = tmp_path / "pax.tar.gz"
    with tarfile.open(pax, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"{top}/data_batch_1")
        info.pax_headers = {"comment": "x" * (2 << 20)}  # a 2 MB extended header, read whole by tarfile
        info.size = len(files["data_batch_1"])
        tar.addfile(info, io.BytesIO(files["data_batch_1"]))
    one_error(run("convert", "--source", pax, "--out", tmp_path / "out", "--allow-partial"),
              "a tar header extension declares")
    many = write_archive(tmp_path / "many.tar.gz", top, files, {f"junk/{i}": b"" for i in range(1001)})
    one_error(run("convert", "--source", many, "--out", tmp_path / "out", "--allow-partial"),
              "more than 1,000 members")
    twice = write_archive(tmp_path / "twice.tar.gz", top, files, {"other/data_batch_2": files["data_batch_2"]})
    one_error(run("convert", "--source", twice, "--out", tmp_path / "out", "--allow-partial"),
              "holds more than one data_batch_2")


def test_an_oversized_file_in_a_source_folder_is_refused_unread(tmp_path, synthetic):
    folder = make_source(tmp_path, synthetic, "python", "folder")
    with open(folder / "cifar-10-batches-py" / "data_batch_3", "r+b") as f:
        f.truncate(400_000_000)  # sparse: costs no disk, would cost 400 MB of memory to read
    one_error(run("convert", "--source", folder, "--out", tmp_path / "out", "--allow-partial"),
              "data_batch_3: declares 400,000,000 bytes")


def test_a_bomb_costs_no_memory(tmp_path):
    """The brief's bomb: a ~400 KB archive whose batch declares 400 MB. Peak memory of the refusal stays
    near an idle interpreter's, nowhere near the 400 MB a read would take."""
    bomb = _archive_declaring(tmp_path / "bomb.tar.gz", {"batches.meta": b"x", "data_batch_1": 400_000_000})
    measure = ("import resource, subprocess, sys; "
               "r = subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]]); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    res = subprocess.run([sys.executable, "-c", measure, CLI, "convert", "--source", str(bomb), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=child_env())
    code, peak_kb = map(int, res.stdout.split()[-2:])
    assert code == 1 and "declares 400,000,000 bytes" in res.stderr, res.stderr
    assert peak_kb < 200_000, f"peak RSS {peak_kb} KB"


class _Call:
    """A pickle that calls `fn(*args)` when loaded (via an allowed global)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _batch(data, labels) -> bytes:
    return pickle.dumps({"batch_label": "x", "labels": labels, "data": data}, protocol=2)


def test_hostile_pickles_are_one_line(tmp_path, synthetic):
    top, files = source_files(synthetic, "python")
    d, labels = synthetic["data_batch_2"]
    labels = [int(v) for v in labels]
    _reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # what a genuine pickle names
    _frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # what a genuine protocol-5 pickle names

    cases = {
        "huge label": (_batch(d, labels[:-1] + [2 ** 70]), "label 1180591620717411303424 at record 59 is outside 0..9"),
        "16 TB through _reconstruct": (pickle.dumps({"data": _Call(_reconstruct, np.ndarray, (2 ** 44,), b"b"),
                                                     "labels": labels}, protocol=2),
                                       "larger than any CIFAR-10 batch holds"),
        "16 TB through _frombuffer": (pickle.dumps({"data": _Call(_frombuffer, bytearray(1), np.dtype("u1"),
                                                                  (2 ** 44,), "C"), "labels": labels}, protocol=5),
                                      "larger than any CIFAR-10 batch holds"),
        "_frombuffer short of bytes": (pickle.dumps({"data": _Call(_frombuffer, bytearray(10), np.dtype("u1"),
                                                                   (60, 3072), "C"), "labels": labels}, protocol=5),
                                       "array data is 10 bytes, its shape (60, 3072) needs 184,320"),
        "ndarray called directly": (pickle.dumps({"data": _Call(np.ndarray, (2 ** 44,)), "labels": labels},
                                                 protocol=2), "refusing to call numpy.ndarray"),
        "object array": (_batch(np.array([None] * 3, dtype=object), labels), "is not a plain numeric type"),
        "millions of objects": (b"\x80\x02" + b"]" * 300_000 + b".", "more than 200,000 objects"),
    }
    for case, (blob, fragment) in cases.items():
        src = write_archive(tmp_path / "bad.tar.gz", top, {**files, "data_batch_2": blob})
        one_error(run("convert", "--source", src, "--out", tmp_path / "out", "--allow-partial", "--no-beton"),
                  fragment)
    assert not (tmp_path / "out").exists()


def _real_sized_batch(seed: int = 0, pixels: np.ndarray | None = None) -> dict:
    """A python-version batch of the real size: 10,000 images, labels, file names like the official ones."""
    rng = np.random.default_rng(seed)
    return {"batch_label": "training batch 1 of 5", "labels": [int(v) for v in rng.integers(0, 10, 10_000)],
            "data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8) if pixels is None else pixels,
            "filenames": [f"leptodactylus_pentadactylus_s_{i:06d}.png" for i in range(10_000)]}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_real_sized_batch_in_every_pickle_protocol_converts(tmp_path, synthetic, protocol):
    """Python 3 writes a batch's bytes as latin-1 text in protocols 0-2 (protocol 1 and 2: ~1.5 times the
    pixels for natural images), as raw bytes in 3-4, through numpy's _frombuffer in 5: all are CIFAR-10."""
    from alexpipe.pipeline.source.unpickle import safe_loads
    from alexpipe.pipeline.source.archives import read_cifar10

    batch = _real_sized_batch(protocol)
    blob = pickle.dumps(batch, protocol=protocol)
    assert np.array_equal(safe_loads(blob, "data_batch_1")["data"], batch["data"])
    top, files = source_files(synthetic, "python")
    archive = tmp_path / "cifar.tar"  # uncompressed: gzip would spend seconds on random pixels
    with tarfile.open(archive, "w") as tar:
        for name, data in {**files, "data_batch_1": blob}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = read_cifar10(archive, allow_partial=True)
    expected = batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(raw.train.images[:10_000], expected)
    assert raw.train.labels[:10_000].tolist() == batch["labels"]


def test_the_size_limit_admits_the_largest_encoding_of_a_batch():
    """Protocols 1 and 2 take two bytes for every pixel byte above 0x7f, so a batch of bright images is the
    largest encoding of natural images (protocol 0 writes five byte values as six-byte escapes: about 1.1
    times the pixels for the real batches)."""
    bright = _real_sized_batch(pixels=np.full((10_000, 3072), 0xFF, np.uint8))
    assert max(len(pickle.dumps(bright, protocol=p)) for p in (1, 2)) <= MAX_BATCH_BYTES


def test_bad_flags_and_unwritable_places_are_one_line(tmp_path, src):
    one_error(run("convert", "--source", src, "--out", tmp_path / "o", "--seed", "-1", "--allow-partial"), "--seed")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    prefix = []
    if os.geteuid() == 0:  # root ignores permissions unless it gives up CAP_DAC_OVERRIDE
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a folder read-only to this test")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
    res = subprocess.run([*prefix, sys.executable, "-c", CLI, "convert", "--source", str(src), "--out",
                          str(ro / "out"), "--allow-partial", "--no-beton"],
                         capture_output=True, text=True, timeout=300, env=child_env())
    os.chmod(ro, 0o755)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"error: cannot write in {ro} (Permission denied)"), res.stderr
    assert list(ro.iterdir()) == []


# ---------------------------------------------------------------- what reaches the terminal

def test_literal_escapes_markup_and_control_characters():
    from rich.console import Console

    for text in ("[/x]", "[red]x[/red]", "a\\", "\\[b]", "tab\there", "bell\x07", "\x1b[31mred", "\udcff", "\u202e"):
        c = Console(file=io.StringIO(), color_system=None, emoji=False, highlight=False, soft_wrap=True)
        c.print(literal(text))
        shown = c.file.getvalue().rstrip("\n")
        assert "\x1b" not in shown and "\n" not in shown and "\x07" not in shown
        assert shown == text or "\\" in shown, (text, shown)
    assert literal("[/x]") != "[/x]" and "\\x1b[31m" in literal("\x1b[31m")
    assert literal("\udcff") == "\\xff" and literal("a\nb") == "a\\nb"


def test_paths_with_markup_print_as_written(tmp_path, src):
    for name in ("a[/x]b", "[red]x[/red]", ":thumbs_up:"):
        out = tmp_path / name
        res = run("convert", "--source", src, "--out", out, "--allow-partial", "--val-size", "50", "--no-beton")
        assert res.exit_code == 0, res.output
        assert f"converted into {out}" in " ".join(res.output.split())
        res = run("info", out)
        assert res.exit_code == 0 and str(out) in res.output, res.output
    res = run("convert", "--source", tmp_path / "nowhere[/x]", "--out", tmp_path / "o", "--no-beton")
    one_error(res, "nowhere[/x]: no such file or folder")


def test_class_names_with_markup_and_escapes_print_literally(tmp_path, synthetic):
    top, files = source_files(synthetic, "python")
    names = ["[bold]cat[/bold]", "\x1b[31mred", "[/x]"] + CLASSES[3:]
    files["batches.meta"] = pickle.dumps({"label_names": names}, protocol=2)
    src = write_archive(tmp_path / "marked.tar.gz", top, files)
    out = tmp_path / "out"
    assert run("convert", "--source", src, "--out", out, "--allow-partial", "--val-size", "50",
               "--no-beton").exit_code == 0
    res = run("info", out)
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output
    assert "classes: [bold]cat[/bold], \\x1b[31mred, [/x], cat" in res.output


# ---------------------------------------------------------------- format, papercuts

def test_pca_eigenvectors_print_as_the_columns_they_are(tmp_path, src):
    out = tmp_path / "out"
    res = run("convert", "--source", src, "--out", out, "--allow-partial", "--val-size", "50", "--no-beton")
    assert res.exit_code == 0, res.output
    vecs = np.array(load_split(out, "train").meta.stats.eigenvectors)
    v1 = "v1 = (" + ", ".join(f"{x:.4f}" for x in vecs[:, 0]) + ")"
    assert v1 in res.output and v1 in run("info", out).output


def test_the_cli_module_does_not_import_torch():
    code = ("import sys; import alexpipe.pipeline.cli; assert 'torch' not in sys.modules, 'torch'; "
            "from alexpipe.pipeline import load_split, make_loader, DataError, BACKENDS, verify_dataset; "
            "print(BACKENDS)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=child_env())
    assert res.returncode == 0, res.stderr
    assert "resident" in res.stdout
