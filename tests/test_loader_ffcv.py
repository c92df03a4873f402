"""What is specific to the ffcv backend (the shared contract is in test_loaders.py).

Its Operations run directly against the reference, its counter-based
generator against an independent implementation and the right statistics, its
device tail (the GPU path, run here on the CPU) against the numba path, its
epoch handling on one reused loader, and its errors on missing or stale .beton
files. Every FFCV Loader costs a numba compilation, so the loaders here are few
and shared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexpipe.pipeline import DataError, load_split, make_loader
from alexpipe.pipeline.augment import AugParams, normalise_affine, pca_matrix
from alexpipe.pipeline.augment.reference import augment_batch_reference
from alexpipe.pipeline.beton import beton_path, write_beton
from alexpipe.pipeline.loaders import LoaderConfig
from alexpipe.pipeline.loaders.base import mix_seed
from alexpipe.pipeline.loaders.ffcv import FfcvLoader
from alexpipe.pipeline.loaders.ffcv_ops import EpochKey, HostArray, PCAJitterNormalise, TranslateFlip, explicit_geometry
from alexpipe.pipeline.loaders.ffcv_ops import hashrng

from conftest import needs_cuda, write_dataset

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def py_mix64(z: int) -> int:
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def py_draw(key: int, index: int, stream: int) -> int:
    """hashrng.draw in Python integers: catches any silent float or signed arithmetic in the numba version."""
    sample = py_mix64(key ^ py_mix64((index * GOLDEN + GOLDEN) & MASK))
    return py_mix64((sample + (stream + 1) * GOLDEN) & MASK)


def test_hash_matches_an_integer_implementation():
    for key in (0, 1, 12345, mix_seed(0, 0), (1 << 64) - 1):
        for index in (0, 1, 2, 39999, 1 << 40):
            for stream in range(7):
                assert int(hashrng.draw(np.uint64(key), index, stream)) == py_draw(key, index, stream)


def test_generator_statistics_and_epoch_independence():
    n, sigma = 40000, 0.1
    idx = np.arange(n, dtype=np.int64)
    key = np.uint64(mix_seed(3, 0))
    dx, dy, flip, alpha = hashrng.sample_params(key, idx, sigma)
    assert dx.min() == 0 and dx.max() == 8 and dy.min() == 0 and dy.max() == 8
    counts = np.zeros((9, 9))
    np.add.at(counts, (dy, dx), 1)
    expected = n / 81
    assert ((counts - expected) ** 2 / expected).sum() < 140  # 80 dof
    assert abs(flip.mean() - 0.5) < 0.01
    assert np.abs(alpha.mean(axis=0)).max() < 0.003
    np.testing.assert_allclose(alpha.std(axis=0), sigma, rtol=0.02)
    assert abs(np.mean(np.abs(alpha) < sigma) - 0.6827) < 0.01  # normal, not merely the right variance
    streams = np.column_stack([dx, dy, flip, alpha]).astype(np.float64)
    corr = np.corrcoef(streams.T) - np.eye(6)
    assert np.abs(corr).max() < 0.03  # the seven streams are independent
    # another epoch: new parameters for (nearly) every image
    dx1, dy1, flip1, alpha1 = hashrng.sample_params(np.uint64(mix_seed(3, 1)), idx, sigma)
    assert np.mean(alpha1[:, 0] == alpha[:, 0]) < 0.001
    assert abs(np.mean((dx1 == dx) & (dy1 == dy)) - 1 / 81) < 0.005


def compiled(op):
    """An Operation's code compiled the way FFCV compiles it, as f(images, indices) -> output batch."""
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    code = Compiler.compile(op.generate_code())

    def run(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
        state = State(jit_mode=True, device=torch.device("cpu"), shape=images.shape[1:], dtype=np.dtype(np.uint8))
        _, query = op.declare_state_and_memory(state)
        return code(images, np.empty((len(indices), *query.shape), query.dtype), indices)

    return run


def ops_for(stats, variant: str, key: EpochKey, params: AugParams | None, sigma: float):
    scale, shift = normalise_affine(stats)
    alphas = HostArray(params.alpha) if params is not None else None
    geometry = explicit_geometry(params) if params is not None else None
    return (TranslateFlip(key, geometry),
            PCAJitterNormalise(pca_matrix(stats, variant), sigma, scale, shift, key, alphas))


@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_operations_equal_the_reference_on_explicit_params(real_data, variant):
    split = load_split(real_data, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(2))  # sigma 0.5: the clamp matters
    positions = np.random.default_rng(3).choice(len(split), 256, replace=False)
    images = split.images[positions].numpy()
    translate, jitter = (compiled(op) for op in ops_for(split.meta.stats, variant, EpochKey(), params, 0.5))
    out = jitter(translate(images, positions), positions)
    p = params.take(positions)
    ref = augment_batch_reference(images, p.dx, p.dy, p.flip, p.alpha, split.meta.stats, variant)
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), ref, rtol=0, atol=1e-4)


def test_operations_draw_what_sample_params_draws(real_data):
    """The numba ops and the device tail's `sample_params` are one generator: same key, same parameters."""
    split = load_split(real_data, "train")
    positions = np.arange(5000, 5256, dtype=np.int64)
    images = split.images[positions].numpy()
    key = EpochKey()
    translate, jitter = (compiled(op) for op in ops_for(split.meta.stats, "blog", key, None, 0.1))
    outs = []
    for epoch in (7, 8):  # the compiled code reads the key when it runs, not when it was compiled
        key.set(seed=4, epoch=epoch)
        out = jitter(translate(images, positions), positions)
        dx, dy, flip, alpha = hashrng.sample_params(key.value, positions, 0.1)
        ref = augment_batch_reference(images, dx, dy, flip, alpha, split.meta.stats, "blog")
        np.testing.assert_allclose(out.transpose(0, 3, 1, 2), ref, rtol=0, atol=1e-4)
        outs.append(out.copy())
    assert np.mean(np.any(outs[0] != outs[1], axis=(1, 2, 3))) > 0.99


def ffcv_loader(root, augment_on: str = "auto", **options) -> FfcvLoader:
    return FfcvLoader(LoaderConfig(root=root, **options), augment_on=augment_on)


def by_position(loader, epoch: int) -> dict[int, torch.Tensor]:
    loader.set_epoch(epoch)
    return {int(i): x[k] for x, _, idx in loader for k, i in enumerate(idx)}


@pytest.fixture(scope="module")
def cpu_epoch(real_data) -> dict[int, torch.Tensor]:
    """Epoch 3 of 640 training images, numba path; num_workers above the core count (clamped)."""
    loader = ffcv_loader(real_data, split="train", batch_size=64, indices=np.arange(640), seed=9, with_index=True,
                         num_workers=16)
    return by_position(loader, 3)


def test_augmentation_depends_on_seed_epoch_and_image_only(real_data, cpu_epoch):
    """One thread instead of two, and rank 1 of 2 instead of a single rank: each image gets the same tensor."""
    loader = ffcv_loader(real_data, split="train", batch_size=64, indices=np.arange(640), seed=9, with_index=True,
                         num_workers=1, rank=1, world_size=2)
    shard = by_position(loader, 3)
    assert len(shard) == 320
    for pos, x in shard.items():
        assert torch.equal(x, cpu_epoch[pos])


def test_device_tail_equals_the_numba_path(real_data, cpu_epoch):
    """The GPU path (jitter + normalise as torch ops after ToDevice), run on the CPU."""
    loader = ffcv_loader(real_data, "device", split="train", batch_size=64, indices=np.arange(640), seed=9,
                         with_index=True)
    tail = by_position(loader, 3)
    assert tail.keys() == cpu_epoch.keys()
    for pos, x in tail.items():
        torch.testing.assert_close(x, cpu_epoch[pos], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_device_tail_equals_the_reference_on_explicit_params(real_data, variant):
    split = load_split(real_data, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(5))
    loader = ffcv_loader(real_data, "device", split="train", batch_size=100, pca=variant, params=params,
                         indices=np.arange(300), with_index=True, channels_last=True)
    for x, y, idx in loader:
        idx = idx.numpy()
        p = params.take(idx)
        ref = augment_batch_reference(split.images[idx].numpy(), p.dx, p.dy, p.flip, p.alpha, split.meta.stats,
                                      variant)
        assert x.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=1e-4)
        assert torch.equal(y, split.labels[idx])


def test_one_loader_across_epochs_with_an_early_break(real_data):
    """set_epoch on a reused loader (no rebuild): the shared epoch order, reproducible, after an abandoned epoch."""
    loader = make_loader(real_data, "train", "ffcv", batch_size=100, indices=np.arange(1050), seed=7,
                         with_index=True)
    loader.set_epoch(0)
    it = iter(loader)
    first = next(it)
    it.close()  # abandon epoch 0 after one batch
    loader.set_epoch(1)
    epoch1 = [tuple(t.clone() for t in b) for b in loader]
    assert len(epoch1) == len(loader) == len(loader._ffcv) == 10
    visited = np.concatenate([i.numpy() for _, _, i in epoch1])
    np.testing.assert_array_equal(visited, loader.order(1)[:1000])  # the shared order, tail dropped
    loader.set_epoch(1)
    for a, b in zip(epoch1, loader):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    loader.set_epoch(0)
    again = next(iter(loader))
    assert all(torch.equal(u, v) for u, v in zip(first, again))


def test_batches_are_fresh_tensors_not_ffcv_buffers(real_data):
    """FFCV recycles its output buffers; every yielded batch must survive later ones (float32 channels_last is
    the case where a permute alone would have returned a view of FFCV's buffer)."""
    loader = make_loader(real_data, "test", "ffcv", batch_size=50, channels_last=True, indices=np.arange(500),
                         with_index=True)
    kept = list(loader)
    assert len(kept) == 10
    split = load_split(real_data, "test")
    scale, shift = normalise_affine(split.meta.stats)
    for x, y, idx in kept:
        ref = split.images[idx].numpy().astype(np.float32) * scale + shift
        np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), ref, rtol=0, atol=1e-5)
        assert torch.equal(y, split.labels[idx])


def test_missing_beton_says_how_to_make_it(small_data):
    with pytest.raises(DataError) as err:
        make_loader(small_data, "train", "ffcv")
    msg = str(err.value)
    assert "\n" not in msg and "train.beton" in msg and "alexpipe convert" in msg and "FFCV installed" in msg


def test_stale_or_corrupt_beton_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(30) % 10
    root = write_dataset(tmp_path / "d", images, labels)
    path = beton_path(root, "train")
    cases = {"labels differ": (images, np.roll(labels, 1)), "20 samples": (images[:20], labels[:20])}
    for expected, (imgs, labs) in cases.items():
        write_beton(path, imgs, labs)
        with pytest.raises(DataError, match=expected) as err:
            make_loader(root, "train", "ffcv")
        assert "alexpipe convert --force" in str(err.value)
    path.write_bytes(b"not a beton file at all" * 10)
    with pytest.raises(DataError, match="not a readable FFCV .beton"):
        make_loader(root, "train", "ffcv")


@needs_cuda
@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_cuda_matches_the_reference_and_the_cpu(synthetic_data, variant):
    split = load_split(synthetic_data, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(6))
    loader = make_loader(synthetic_data, "train", "ffcv", device="cuda", batch_size=128, pca=variant, params=params,
                         indices=np.arange(512), with_index=True, dtype=torch.bfloat16, channels_last=True)
    for x, y, idx in loader:
        assert x.device.type == "cuda" and x.dtype == torch.bfloat16 and y.device.type == "cuda"
        idx = idx.cpu().numpy()
        p = params.take(idx)
        ref = augment_batch_reference(split.images[idx].numpy(), p.dx, p.dy, p.flip, p.alpha, split.meta.stats,
                                      variant)
        torch.testing.assert_close(x.float().cpu(), torch.from_numpy(ref), rtol=1e-2, atol=2e-2)  # bf16 rounding
    own = {k: ffcv_loader(synthetic_data, split="train", device=torch.device(d), batch_size=128, pca=variant, seed=1,
                          indices=np.arange(512), with_index=True) for k, d in (("cpu", "cpu"), ("cuda", "cuda"))}
    a, b = by_position(own["cpu"], 2), by_position(own["cuda"], 2)
    for pos, x in a.items():
        torch.testing.assert_close(b[pos].cpu(), x, rtol=0, atol=1e-4)
