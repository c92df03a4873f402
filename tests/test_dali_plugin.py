"""The DALI plugin (AlexpipePcaJitter): its kernels, its build cache, and the fallback without it.

The shared contract of the dali loader (coverage, sharding, statistics, layout) is
tested with every other backend in test_loaders.py; this file covers what only
the dali backend has.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from alexpipe.pipeline import load_split, make_loader
from alexpipe.pipeline.augment import AugParams, FixedParams, pca_matrix
from alexpipe.pipeline.loaders.dali import build as dali_build

from conftest import assert_matches_reference, batches_with_positions

pytestmark = [pytest.mark.dali, pytest.mark.slow]


def check_against_reference(loader, params, split, variant, limit=2):
    """The first `limit` batches of a loader given `params` equal the reference (images and labels)."""
    got = batches_with_positions(loader, limit=limit)
    assert len(got) == limit
    for x, y, positions in got:
        assert_matches_reference(x, split, positions, params, variant)
        assert torch.equal(y, split.labels[positions])


def given_params_loader(root, variant, device="cpu", indices=np.arange(1000), **extra):
    split = load_split(root, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(7))  # sigma 0.5: the clamp matters
    loader = make_loader(root, "train", "dali", device=device, batch_size=64, pca=variant,
                         param_source=FixedParams(params), indices=indices, seed=1, **extra)
    return loader, params, split


def run_operator(images: np.ndarray, alpha: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The plugin's CPU operator alone, in a CPU-only pipeline."""
    from nvidia.dali import fn, pipeline_def, types

    dali_build.load_plugin()

    @pipeline_def(batch_size=len(images), num_threads=2, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC", dtype=types.UINT8)
        a = fn.external_source(source=lambda: alpha, batch=True, dtype=types.FLOAT)
        return getattr(fn, dali_build.FN_NAME)(x, a, matrix=matrix.ravel().tolist())

    p = pipe()
    p.build()
    (out,) = p.run()
    return np.array(out.as_tensor())


# --- (1) the CPU kernel equals the reference ---

@pytest.mark.real_data
@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_cpu_operator_alone_matches_numpy(real_data, variant):
    split = load_split(real_data, "train")
    images = split.images[:256].numpy().copy()
    alpha = (np.random.default_rng(2).standard_normal((256, 3)) * 0.5).astype(np.float32)
    matrix = pca_matrix(split.meta.stats, variant)
    got = run_operator(images, alpha, matrix)
    delta = alpha.astype(np.float64) @ matrix.astype(np.float64).T
    want = np.clip(images + delta[:, None, None, :], 0.0, 255.0)
    assert got.dtype == np.float32 and got.shape == images.shape
    assert (want == 0).any() and (want == 255).any()  # the clamp was exercised at both ends
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.real_data
@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_loader_with_plugin_matches_reference(real_data, variant):
    loader, params, split = given_params_loader(real_data, variant)
    assert loader.uses_plugin, loader.fallback_reason
    check_against_reference(loader, params, split, variant)


def test_operator_rejects_bad_inputs():
    from nvidia.dali import fn, pipeline_def, types

    dali_build.load_plugin()
    images = np.zeros((2, 4, 4, 4), np.uint8)  # 4 channels: not RGB

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC", dtype=types.UINT8)
        a = fn.external_source(source=lambda: np.zeros((2, 3), np.float32), batch=True, dtype=types.FLOAT)
        return getattr(fn, dali_build.FN_NAME)(x, a, matrix=[0.0] * 9)

    p = pipe()
    p.build()
    with pytest.raises(RuntimeError, match="3 channels"):
        p.run()


# --- (2) the CUDA side ---

@pytest.mark.nvcc
def test_cuda_source_compiles_with_nvcc(tmp_path):
    cuda = dali_build.find_cuda_home()
    obj = tmp_path / "pca_jitter_cu.o"
    cmd = [str(cuda / "bin" / "nvcc"), "-std=c++17", "-O3", "-Xcompiler", "-fPIC",
           *dali_build.nvcc_arch_flags(dali_build.cuda_archs()),
           "-c", str(dali_build.SOURCE_DIR / "pca_jitter.cu"), "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert b"PcaJitterKernel" in obj.read_bytes()


@pytest.mark.nvcc
def test_default_build_registers_the_gpu_operator_too():
    """With nvcc present, one library carries both kernels; loading it on a CPU-only machine is harmless."""
    from nvidia.dali import backend

    lib = dali_build.load_plugin()
    assert lib == dali_build.build_plugin().path.resolve()
    assert dali_build.OP_NAME in backend.RegisteredCPUOps()
    assert dali_build.OP_NAME in backend.RegisteredGPUOps()


@pytest.mark.cuda
@pytest.mark.parametrize("use_plugin", [True, False])
def test_gpu_pipeline_matches_reference(synthetic_data, use_plugin):
    loader, params, split = given_params_loader(synthetic_data, "blog", device="cuda", use_plugin=use_plugin,
                                                indices=np.arange(640))
    assert loader.uses_plugin == use_plugin, loader.fallback_reason
    check_against_reference(loader, params, split, "blog")


# --- (3) a missing or incompatible plugin falls back cleanly ---

def fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "DALI plugin" in str(w.message)]


def dali_loader(root, variant, plugin_path):
    split = load_split(root, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(3))
    loader = make_loader(root, "train", "dali", batch_size=64, pca=variant, param_source=FixedParams(params),
                         indices=np.arange(500), seed=2, plugin_path=plugin_path)
    return loader, params, split


@pytest.mark.real_data
@pytest.mark.parametrize("kind", ["corrupt", "missing", "second-library"])
def test_unusable_plugin_falls_back_warns_once_and_matches(real_data, tmp_path, kind):
    if kind == "corrupt":
        bogus = tmp_path / "libcorrupt.so"
        bogus.write_bytes(b"not a shared object at all")  # not ELF, so the load itself is attempted and fails
    elif kind == "missing":
        bogus = tmp_path / "libmissing.so"
    else:
        # a second, valid library with the same operator: DALI would abort the process on loading it
        bogus = tmp_path / "libcopy.so"
        shutil.copy(dali_build.load_plugin(), bogus)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first, params, split = dali_loader(real_data, "paper", str(bogus))
        second, _, _ = dali_loader(real_data, "paper", str(bogus))
    said = fallback_warnings(record)
    assert len(said) == 1 and str(bogus) in said[0]
    assert not first.uses_plugin and not second.uses_plugin and str(bogus) in first.fallback_reason
    check_against_reference(first, params, split, "paper")


@pytest.mark.real_data
def test_environment_variable_selects_the_library(real_data, tmp_path, monkeypatch):
    bogus = tmp_path / "libenv.so"
    bogus.write_bytes(b"nothing")
    monkeypatch.setenv("ALEXPIPE_DALI_PLUGIN", str(bogus))
    with pytest.warns(RuntimeWarning, match="libenv.so"):
        loader = make_loader(real_data, "train", "dali", batch_size=16, indices=np.arange(32))
    assert not loader.uses_plugin
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32)


# --- (4) the built-in composition alone ---

@pytest.mark.real_data
@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_builtin_fallback_matches_reference(real_data, variant):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loader, params, split = given_params_loader(real_data, variant, use_plugin=False)
    assert not fallback_warnings(record)  # a choice, not a failure: nothing to warn about
    assert not loader.uses_plugin and loader.fallback_reason == "use_plugin=False"
    check_against_reference(loader, params, split, variant)


@pytest.mark.real_data
def test_plugin_and_builtin_agree_on_training_draws(real_data):
    """Same seed and epoch, same parameters: the two jitter implementations give the same batches."""
    def first_batches(use_plugin):
        loader = make_loader(real_data, "train", "dali", batch_size=128, indices=np.arange(512), seed=9,
                             use_plugin=use_plugin, pca_sigma=0.5)
        loader.set_epoch(3)
        return [x for k, (x, _) in zip(range(2), loader)]

    for a, b in zip(first_batches(True), first_batches(False)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


# --- (5) the build cache ---

def test_build_cache_is_reused_and_keyed_by_source_hash(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dali_build.SOURCE_DIR, src)
    cache = tmp_path / "cache"
    first = dali_build.build_plugin(source_dir=src, cache_dir=cache, with_cuda=False)
    assert first.built and first.path.is_file() and not first.with_cuda
    assert first.path.parent.name.startswith(dali_build.dali_version() + "-")
    mtime = first.path.stat().st_mtime_ns
    again = dali_build.build_plugin(source_dir=src, cache_dir=cache, with_cuda=False)
    assert not again.built and again.path == first.path and again.path.stat().st_mtime_ns == mtime
    with open(src / "pca_jitter.cc", "a") as f:
        f.write("\n// an edit changes the hash\n")
    edited = dali_build.build_plugin(source_dir=src, cache_dir=cache, with_cuda=False)
    assert edited.built and edited.path.parent != first.path.parent
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.path.parent.name, edited.path.parent.name])


def test_failed_build_raises_one_line_and_leaves_no_trace(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(dali_build.SOURCE_DIR, src)
    (src / "pca_jitter.cc").write_text("this is not C++\n")
    cache = tmp_path / "cache"
    with pytest.raises(dali_build.PluginUnavailable, match="compiling pca_jitter.cc failed") as err:
        dali_build.build_plugin(source_dir=src, cache_dir=cache, with_cuda=False)
    assert "\n" not in str(err.value)
    assert not any(cache.iterdir())


def test_cache_root_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("ALEXPIPE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dali_build.cache_root() == tmp_path / "alexpipe" / "dali_plugin"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dali_build.cache_root() == Path.home() / ".cache" / "alexpipe" / "dali_plugin"
