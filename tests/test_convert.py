"""`alexpipe convert` / `info`: every source form, hostile input, the format, the stats."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alexpipe.cli import app
from alexpipe.pipeline import DataError, load_split
from alexpipe.pipeline.convert.conversion import carve_val, convert
from alexpipe.pipeline.format.beton import ffcv_present
from alexpipe.pipeline.format.split import split_path
from alexpipe.pipeline.hashing import file_hexdigests

from conftest import CLASSES, make_source, source_files, write_archive, REAL_ARCHIVE

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def nhwc(planes: np.ndarray) -> np.ndarray:
    return planes.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def train_test_arrays(batches):
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return (nhwc(np.concatenate([d for d, _ in train])), np.concatenate([l for _, l in train]),
            nhwc(batches["test_batch"][0]), batches["test_batch"][1])


@pytest.mark.parametrize("version", ["python", "binary"])
@pytest.mark.parametrize("form", ["archive", "folder"])
def test_round_trip_every_source_form(tmp_path, synthetic, version, form):
    src = make_source(tmp_path, synthetic, version, form)
    out = tmp_path / "out"
    res = run("convert", "--source", src, "--out", out, "--val-size", "50", "--allow-partial", "--no-beton")
    assert res.exit_code == 0, res.output
    train_x, train_y, test_x, test_y = train_test_arrays(synthetic)
    tr, va, te = (load_split(out, s) for s in ("train", "val", "test"))
    # the files hold exactly the source pixels and labels, at the recorded source positions
    assert np.array_equal(te.images.numpy(), test_x) and np.array_equal(te.labels.numpy(), test_y)
    for s in (tr, va):
        pos = s.source_index.numpy()
        assert np.array_equal(s.images.numpy(), train_x[pos]) and np.array_equal(s.labels.numpy(), train_y[pos])
    assert sorted(np.concatenate([tr.source_index.numpy(), va.source_index.numpy()]).tolist()) == list(range(300))
    assert tr.meta.classes == tuple(CLASSES)
    assert tr.meta.source["kind"] == f"{version}-{form}"


def test_all_four_forms_write_identical_data(tmp_path, synthetic):
    outputs = []
    for version in ("python", "binary"):
        for form in ("archive", "folder"):
            out = tmp_path / f"out-{version}-{form}"
            convert(make_source(tmp_path, synthetic, version, form), out, val_size=50, allow_partial=True,
                    betons=False)
            outputs.append(out)
    first = {s: load_split(outputs[0], s) for s in ("train", "val", "test")}
    for out in outputs[1:]:
        for s, ref in first.items():
            got = load_split(out, s)
            assert np.array_equal(got.images.numpy(), ref.images.numpy())
            assert np.array_equal(got.labels.numpy(), ref.labels.numpy())
            assert got.meta.stats == ref.meta.stats and got.meta.content_sha256 == ref.meta.content_sha256
            assert got.meta.source["sha256"] != ref.meta.source["sha256"]  # only the source's identity differs


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _converted_out(tmp_path: Path, synthetic) -> Path:
    """An --out folder already holding a good conversion, to check failures leave it untouched."""
    out = tmp_path / "out"
    convert(make_source(tmp_path, synthetic, "binary", "archive"), out, val_size=50, allow_partial=True,
            betons=False)
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: file_hexdigests(p, "sha256")[0] for p in sorted(folder.iterdir())}


def _python_archive_with(tmp_path: Path, synthetic, replace: dict[str, bytes] | None = None,
                         drop: str | None = None, extra: dict[str, bytes] | None = None) -> Path:
    top, files = source_files(synthetic, "python")
    files.update(replace or {})
    if drop:
        del files[drop]
    return write_archive(tmp_path / "bad.tar.gz", top, files, extra)


def _batch_pickle(data, labels) -> bytes:
    return pickle.dumps({"batch_label": "x", "labels": labels, "data": data}, protocol=2)


@pytest.mark.parametrize("case", ["malicious", "truncated", "traversal", "label_range", "shape", "missing",
                                  "not_tar", "empty_folder"])
def test_bad_input_one_clear_error_and_out_unchanged(tmp_path, synthetic, case):
    for sub in "gmtrsx":
        (tmp_path / sub).mkdir(exist_ok=True)
    cases, marker = _bad_sources_prepared(tmp_path, synthetic)
    src, fragment = cases[case]
    out = _converted_out(tmp_path, synthetic)
    before = _snapshot(out)
    res = run("convert", "--source", src, "--out", out, "--val-size", "50", "--allow-partial", "--force",
              "--no-beton")
    assert res.exit_code == 1
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:"), res.output
    assert fragment in " ".join(res.output.split()), res.output
    assert _snapshot(out) == before  # --out untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp folders left
    assert not marker.exists()  # the malicious pickle ran nothing


def _bad_sources_prepared(tmp_path, synthetic):
    marker = tmp_path / "pwned"
    top, files = source_files(synthetic, "python")
    good = write_archive(tmp_path / "g" / "good.tar.gz", top, files)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    d, l = synthetic["data_batch_2"]
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir(exist_ok=True)
    cases = {
        "malicious": (_python_archive_with(tmp_path / "m", synthetic,
                                           {"data_batch_1": pickle.dumps(_Evil(marker), protocol=2)}),
                      "refusing to load global"),
        "truncated": (truncated, "truncated"),
        "traversal": (_python_archive_with(tmp_path / "t", synthetic, extra={"../evil": b"x"}),
                      "outside the archive"),
        "label_range": (_python_archive_with(tmp_path / "r", synthetic,
                                             {"data_batch_2": _batch_pickle(d, [int(v) for v in l[:-1]] + [10])}),
                        "outside 0..9"),
        "shape": (_python_archive_with(tmp_path / "s", synthetic,
                                       {"data_batch_2": _batch_pickle(d[:, :3000].copy(), [int(v) for v in l])}),
                  "(N, 3072)"),
        "missing": (_python_archive_with(tmp_path / "x", synthetic, drop="data_batch_3"), "data_batch_3"),
        "not_tar": (tmp_path / "notes.txt", "not a readable tar archive"),
        "empty_folder": (tmp_path / "empty", "no CIFAR-10 batches found"),
    }
    return cases, marker


def test_counts_checked_unless_allow_partial(tmp_path, synthetic):
    src = make_source(tmp_path, synthetic, "python", "archive")
    res = run("convert", "--source", src, "--out", tmp_path / "out", "--val-size", "50", "--no-beton")
    assert res.exit_code == 1 and "--allow-partial" in " ".join(res.output.split())
    assert not (tmp_path / "out").exists()


def test_val_split_is_balanced_reproducible_and_optional(tmp_path, synthetic):
    labels = np.arange(1000) % 10
    tr, va = carve_val(labels, 100, seed=4)
    assert np.bincount(labels[va], minlength=10).tolist() == [10] * 10
    assert not set(tr) & set(va) and len(tr) + len(va) == 1000
    assert np.array_equal(carve_val(labels, 100, seed=4)[1], va)
    assert not np.array_equal(carve_val(labels, 100, seed=5)[1], va)
    with pytest.raises(DataError, match="multiple of 10"):
        carve_val(labels, 105, seed=0)
    out = tmp_path / "noval"
    convert(make_source(tmp_path, synthetic, "python", "archive"), out, val_size=0, allow_partial=True,
            betons=False)
    assert not split_path(out, "val").exists() and len(load_split(out, "train")) == 300
    with pytest.raises(DataError, match="no val split"):
        load_split(out, "val")


def test_stats_use_train_split_only(tmp_path, synthetic):
    out = tmp_path / "out"
    convert(make_source(tmp_path, synthetic, "python", "archive"), out, val_size=50, allow_partial=True,
            betons=False)
    tr = load_split(out, "train")
    px = tr.images.numpy().reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(tr.meta.stats.mean, px.mean(0), rtol=1e-12)
    np.testing.assert_allclose(tr.meta.stats.std, px.std(0), rtol=1e-12)
    for s in ("val", "test"):  # every split records the train stats
        assert load_split(out, s).meta.stats == tr.meta.stats


def _serve_file_url(path: Path) -> str:
    return path.resolve().as_uri()


def test_download_checks_md5(tmp_path, synthetic, monkeypatch):
    src = make_source(tmp_path, synthetic, "python", "archive")
    (md5,) = file_hexdigests(src, "md5")
    cache = tmp_path / "cache"
    bad = run("convert", "--download", "--url", _serve_file_url(src), "--md5", "0" * 32, "--download-dir", cache,
              "--out", tmp_path / "o1", "--val-size", "50", "--allow-partial", "--no-beton")
    assert bad.exit_code == 1 and "md5" in bad.output
    assert not (tmp_path / "o1").exists() and not list(cache.iterdir())  # nothing kept
    good = run("convert", "--download", "--url", _serve_file_url(src), "--md5", md5, "--download-dir", cache,
               "--out", tmp_path / "o2", "--val-size", "50", "--allow-partial", "--no-beton")
    assert good.exit_code == 0, good.output
    assert (cache / src.name).exists() and len(load_split(tmp_path / "o2", "test")) == 60
    offline = run("convert", "--download", "--url", "http://127.0.0.1:9/cifar-10-python.tar.gz", "--download-dir",
                  cache, "--out", tmp_path / "o3")
    assert offline.exit_code == 1 and "--source" in " ".join(offline.output.split())


def test_default_source_places(tmp_path, synthetic, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALEXPIPE_CIFAR10", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "nocache"))
    res = run("convert", "--out", "out", "--no-beton")
    assert res.exit_code == 1 and "--source" in res.output and "--download" in res.output
    top, files = source_files(synthetic, "python")
    write_archive(tmp_path / "cifar-10-python.tar.gz", top, files)
    res = run("convert", "--out", "out", "--val-size", "50", "--allow-partial", "--no-beton")
    assert res.exit_code == 0, res.output
    assert len(load_split(tmp_path / "out", "train")) == 250


def test_refuses_non_empty_out_without_force(tmp_path, synthetic):
    out = _converted_out(tmp_path, synthetic)
    before = _snapshot(out)
    res = run("convert", "--source", make_source(tmp_path, synthetic, "python", "archive"), "--out", out,
              "--val-size", "50", "--allow-partial", "--no-beton")
    assert res.exit_code == 1 and "--force" in res.output
    assert _snapshot(out) == before


def test_safetensors_file_is_readable_without_alexpipe(small_data):
    from safetensors import safe_open

    with safe_open(str(split_path(small_data, "train")), framework="np") as f:
        md = f.metadata()
        images, labels = f.get_tensor("images"), f.get_tensor("labels")
    assert images.dtype == np.uint8 and images.shape == (250, 32, 32, 3) and labels.dtype == np.int64
    assert json.loads(md["format"]) == "alexpipe-cifar10" and json.loads(md["format_version"]) == 1
    vecs = np.array(json.loads(md["pca_eigenvectors"]))
    vals = np.array(json.loads(md["pca_eigenvalues"]))
    assert vals[0] >= vals[1] >= vals[2] and np.allclose(vecs.T @ vecs, np.eye(3), atol=1e-9)


def test_load_is_a_memory_map(small_data):
    split = load_split(small_data, "train")
    ptr = split.images.data_ptr()
    path = str(split_path(small_data, "train").resolve())
    maps = Path("/proc/self/maps").read_text().splitlines()
    mapped = [ln for ln in maps if ln.endswith(path)]
    assert any(int(ln.split("-")[0], 16) <= ptr < int(ln.split()[0].split("-")[1], 16) for ln in mapped)


def test_info_reports_and_detects_corruption(tmp_path, synthetic):
    out = _converted_out(tmp_path, synthetic)
    res = run("info", out)
    assert res.exit_code == 0, res.output
    assert "integrity: ok" in res.output and "train" in res.output and "airplane" in res.output
    f = split_path(out, "test")
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # flip a label byte
    f.write_bytes(bytes(data))
    res = run("info", out)
    assert res.exit_code == 1 and "test.safetensors" in res.output
    assert run("info", tmp_path / "nowhere").exit_code == 1


@pytest.mark.slow
@pytest.mark.real_data
def test_real_data_counts_and_stats(real_data):
    tr, va, te = (load_split(real_data, s) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (40_000, 10_000, 10_000)
    assert tr.meta.class_counts == (4000,) * 10 and va.meta.class_counts == (1000,) * 10
    assert te.meta.class_counts == (1000,) * 10
    assert te.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert tr.meta.source["sha256"] == file_hexdigests(REAL_ARCHIVE, "sha256")[0]
    md5 = file_hexdigests(REAL_ARCHIVE, "md5")[0]  # ../shared/data's copy went through JPEG (its README): not
    assert tr.meta.source["md5"] == md5  # the official md5, which a user's genuine archive would have
    assert tr.meta.source["md5_official"] is (md5 == "c58f30108f718f92721af3b95e74349a")
    px = tr.images.numpy().reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(tr.meta.stats.mean, px.mean(0), rtol=1e-9)
    np.testing.assert_allclose(tr.meta.stats.std, px.std(0), rtol=1e-9)
    vals, vecs = np.linalg.eigh(np.cov(px, rowvar=False))
    vals, vecs = vals[::-1], vecs[:, ::-1]
    np.testing.assert_allclose(tr.meta.stats.eigenvalues, vals, rtol=1e-6)
    got = np.array(tr.meta.stats.eigenvectors)
    np.testing.assert_allclose(np.abs(got), np.abs(vecs), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.abs((got * vecs).sum(0)), 1.0, rtol=1e-9)  # same axes up to sign
    # the data README quotes the full 50,000-image train set; ours excludes the 10,000 val images
    np.testing.assert_allclose(np.array(tr.meta.stats.mean) / 255, [0.4913, 0.4821, 0.4465], atol=1e-3)


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_converted_files_honour_the_umask(tmp_path, synthetic, umask, file_mode, dir_mode):
    src = make_source(tmp_path, synthetic, "python", "archive")
    old = os.umask(umask)
    try:
        out = tmp_path / "out"
        convert(src, out, val_size=50, allow_partial=True, betons=ffcv_present())
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == dir_mode
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {file_mode}, modes
    assert ("train.beton" in modes) == ffcv_present()


@pytest.mark.ffcv
@pytest.mark.slow
def test_beton_writer_writes_ffcv_s_own_bytes(tmp_path):
    """Our in-process writer and FFCV's DatasetWriter (one worker) produce identical files."""
    import contextlib

    import ffcv.types as t
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.writer import DatasetWriter

    from alexpipe.pipeline.format import beton

    assert (beton.HEADER_TYPE, beton.FIELD_DESC_TYPE, beton.ALLOC_TABLE_TYPE, beton.FORMAT_VERSION) == \
        (t.HeaderType, t.FieldDescType, t.ALLOC_TABLE_TYPE, t.CURRENT_VERSION)
    assert beton.METADATA_TYPE == t.get_metadata_type([RGBImageField(), IntField()])
    assert beton.RAW_IMAGE_MODE == IMAGE_MODES["raw"]
    rng = np.random.default_rng(0)
    for n in (1, 2731, 3000):  # one sample; exactly one page (8 MiB // 3072 = 2730) plus one; several
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        beton.write_beton(tmp_path / "ours.beton", images, labels)

        class Pairs:
            def __len__(self):
                return n

            def __getitem__(self, i):
                return images[i], int(labels[i])

        writer = DatasetWriter(str(tmp_path / "ffcv.beton"), {"image": RGBImageField(write_mode="raw", max_resolution=32),
                                                              "label": IntField()}, num_workers=1)
        with contextlib.redirect_stderr(io.StringIO()):
            writer.from_indexed_dataset(Pairs())
        assert (tmp_path / "ours.beton").read_bytes() == (tmp_path / "ffcv.beton").read_bytes(), n
