"""Shared fixtures: synthetic CIFAR-format sources the tests build, the real data when present, the markers.

Markers (pyproject.toml) say what a test needs, on the test itself: `cuda`,
`dali`, `ffcv`, `nvcc`, `real_data`; `slow` marks what `make test-fast` leaves
out. A test whose need is missing here is skipped, saying which
(`pytest_runtest_setup`, the one place tests are skipped). `BACKENDS` is the
one list of backends, each carrying its own markers.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import shutil
import subprocess
import tarfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The one list of backends the tests run, each with what it needs: dali and ffcv need their libraries (and, the
# first time, compile: numba's operations, the DALI plugin), so they are marked slow as well.
BACKENDS = [pytest.param("resident", id="resident"), pytest.param("torchvision", id="torchvision"),
            pytest.param("dali", id="dali", marks=[pytest.mark.dali, pytest.mark.slow]),
            pytest.param("ffcv", id="ffcv", marks=[pytest.mark.ffcv, pytest.mark.slow])]


@cache
def _missing(need: str) -> str | None:
    """Why this machine cannot run tests marked `need` (None: it can)."""
    if need == "cuda":
        import torch

        return None if torch.cuda.is_available() else "needs a CUDA GPU (none here)"
    if need == "dali":
        found = importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali")
        return None if found else "needs NVIDIA DALI (pip install 'alexpipe[dali]')"
    if need == "ffcv":
        return None if importlib.util.find_spec("ffcv") else "needs FFCV (see the README's install line)"
    if need == "nvcc":
        from alexpipe.pipeline.loaders.dali.build import find_cuda_home

        return None if find_cuda_home() else "needs nvcc (a CUDA toolkit; set CUDA_HOME) to compile CUDA code"
    if need == "real_data":
        return None if REAL_ARCHIVE.exists() else f"needs the real CIFAR-10 at {REAL_ARCHIVE} (../shared/data)"
    return None


def pytest_runtest_setup(item) -> None:
    for need in ("cuda", "dali", "ffcv", "nvcc", "real_data"):
        if item.get_closest_marker(need) and _missing(need):
            pytest.skip(_missing(need))


def assert_matches_reference(x, split, positions, params, variant: str, atol: float = 1e-4,
                             rtol: float = 0.0) -> None:
    """`x` (a batch, any device and dtype) is the reference augmentation of `split`'s images at `positions`
    with `params` (the whole split's table; None: eval, normalisation only), to `atol`."""
    import torch

    from alexpipe.pipeline.augment.reference import augment_batch_reference, normalise_image

    positions = np.asarray(positions)
    images = split.images[torch.as_tensor(positions)].numpy()
    if params is None:
        ref = np.stack([normalise_image(img, split.meta.stats) for img in images])
    else:
        p = params.take(positions)
        ref = augment_batch_reference(images, p.dx, p.dy, p.flip, p.alpha, split.meta.stats, variant)
    assert tuple(x.shape) == ref.shape
    np.testing.assert_allclose(x.float().cpu().numpy(), ref, rtol=rtol, atol=atol)


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl)."""
    import json

    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def one_error(res, *fragments: str, code: int = 1) -> str:
    """A CLI result (typer's CliRunner) that failed with status `code` and exactly one `error:` line holding every
    fragment, with no traceback: what every refused input must look like."""
    out = res.output
    assert res.exit_code == code, out
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    for fragment in fragments:
        assert fragment in errors[0], out
    return errors[0]


def batches_with_positions(loader, limit: int | None = None) -> list[tuple]:
    """(images, labels, split positions) of the loader's current epoch, on the CPU; positions from its order."""
    b = loader.cfg.batch_size
    order = loader.order()
    out = []
    for k, (x, y) in enumerate(loader):
        if limit is not None and k >= limit:
            break
        out.append((x.cpu(), y.cpu(), order[k * b:(k + 1) * b]))
    return out


def synthetic_batches(per_batch: int = 60, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """data_batch_1..5 and test_batch as (N x 3072 uint8 planes, labels), every class present."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(per_batch) % 10
        rng.shuffle(labels)
        out[name] = (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), labels.astype(np.int64))
    return out


def _python_files(batches) -> dict[str, bytes]:
    files = {"batches.meta": pickle.dumps({"label_names": CLASSES, "num_cases_per_batch": 10000,
                                           "num_vis": 3072}, protocol=2)}
    for name, (data, labels) in batches.items():
        files[name] = pickle.dumps({"batch_label": name, "labels": [int(v) for v in labels], "data": data,
                                    "filenames": [f"img_{i}.png" for i in range(len(labels))]}, protocol=2)
    return files


def _binary_files(batches) -> dict[str, bytes]:
    files = {"batches.meta.txt": ("\n".join(CLASSES) + "\n\n").encode()}
    for name, (data, labels) in batches.items():
        rec = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        files[name + ".bin"] = rec.tobytes()
    return files


def source_files(batches, version: str) -> tuple[str, dict[str, bytes]]:
    """(top folder, {basename: bytes}) of the python or binary version."""
    if version == "python":
        return "cifar-10-batches-py", _python_files(batches)
    return "cifar-10-batches-bin", _binary_files(batches)


def write_archive(path: Path, top: str, files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**{f"{top}/{k}": v for k, v in files.items()}, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(path: Path, top: str, files: dict[str, bytes]) -> Path:
    (path / top).mkdir(parents=True)
    for k, v in files.items():
        (path / top / k).write_bytes(v)
    return path


def make_source(tmp: Path, batches, version: str, form: str) -> Path:
    """A source of the given version ("python"/"binary") and form ("archive"/"folder")."""
    top, files = source_files(batches, version)
    if form == "archive":
        return write_archive(tmp / f"cifar-10-{version}.tar.gz", top, files)
    return write_folder(tmp / f"extracted-{version}", top, files)


@pytest.fixture()
def small_fs(tmp_path):
    """`small_fs(size)`: a fresh tmpfs of `size` ("2m") mounted inside tmp_path, unmounted after the test: a
    disk that really fills up, with no other user to disturb."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command: cannot make a small file system to fill")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
        if res.returncode:
            pytest.skip(f"cannot mount a small file system to fill (needs root): {res.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="session")
def synthetic():
    return synthetic_batches()


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, synthetic) -> Path:
    """A converted synthetic dataset: 250 train / 50 val / 60 test images (no .beton)."""
    from alexpipe.pipeline.convert.conversion import convert

    tmp = tmp_path_factory.mktemp("small")
    src = make_source(tmp, synthetic, "python", "archive")
    convert(src, tmp / "data", val_size=50, allow_partial=True, betons=False)
    return tmp / "data"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A converted synthetic dataset big enough for loader tests: 900 train / 100 val / 200 test images,
    with .beton files when FFCV is installed. What the GPU tests use: they must not need ../shared/data."""
    from alexpipe.pipeline.convert.conversion import convert

    tmp = tmp_path_factory.mktemp("synthetic")
    src = make_source(tmp, synthetic_batches(per_batch=200, seed=1), "python", "archive")
    convert(src, tmp / "data", val_size=100, allow_partial=True)
    return tmp / "data"


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> Path:
    """The real CIFAR-10 from ../shared/data, converted once per test session (with .beton files if FFCV is here).
    Tests using it are marked real_data (skipped where the archive is absent) and slow."""
    from alexpipe.pipeline.convert.conversion import convert

    out = tmp_path_factory.mktemp("real") / "cifar10"
    convert(REAL_ARCHIVE, out)
    return out


# Statistics of the real train split (rounded): a well-conditioned PCA for synthetic files.
REALISTIC_STATS = dict(
    mean=(125.28, 122.90, 113.87), std=(62.54, 61.89, 66.41), eigenvalues=(11161.08, 819.72, 171.59),
    eigenvectors=((0.5577, -0.7044, -0.4391), (0.5769, -0.0515, 0.8152), (0.5968, 0.7080, -0.3777)),
)
MARKER_LEFT, MARKER_RIGHT = 100, 200


def marker_image() -> np.ndarray:
    """32x32 RGB: left half MARKER_LEFT, right half MARKER_RIGHT, so flips and shifts can be read back."""
    img = np.full((32, 32, 3), MARKER_LEFT, np.uint8)
    img[:, 16:] = MARKER_RIGHT
    return img


def write_dataset(out: Path, images: np.ndarray, labels: np.ndarray, split: str = "train",
                  betons: bool = True) -> Path:
    """A converted folder holding one split of the given images, with REALISTIC_STATS in its metadata."""
    from alexpipe.pipeline.format.beton import beton_path, ffcv_present, write_beton
    from alexpipe.pipeline.format.split import FORMAT_VERSION, SplitMeta, content_digest, split_path, write_split
    from alexpipe.pipeline.format.stats import ChannelStats

    out.mkdir(parents=True, exist_ok=True)
    meta = SplitMeta(split=split, classes=tuple(CLASSES), num_images=len(labels),
                     class_counts=tuple(int(c) for c in np.bincount(labels, minlength=10)),
                     stats=ChannelStats(**REALISTIC_STATS), content_sha256=content_digest(images, labels),
                     split_seed=0, val_size=0, source={"kind": "synthetic", "sha256": "", "md5": None,
                                                        "md5_official": None},
                     format_version=FORMAT_VERSION, created_utc="2026-01-01T00:00:00+00:00")
    write_split(split_path(out, split), images, labels, np.arange(len(labels)), meta)
    if betons and ffcv_present():
        write_beton(beton_path(out, split), images, labels)
    return out


@pytest.fixture(scope="session")
def marker_data(tmp_path_factory) -> Path:
    """3,000 copies of marker_image() as a train split (with a .beton when FFCV is installed)."""
    n = 3000
    images = np.broadcast_to(marker_image(), (n, 32, 32, 3)).copy()
    return write_dataset(tmp_path_factory.mktemp("marker") / "data", images, np.arange(n) % 10)
