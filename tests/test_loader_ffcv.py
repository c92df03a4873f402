"""What is specific to the ffcv backend (the shared contract is in test_loaders.py).

Its Operations run directly against the reference, reading the epoch's
parameter tables at call time; its device tail (the GPU path, run here on the
CPU) against the numba path; its epoch handling on one reused loader; and its
errors on missing or stale .beton files. Every FFCV Loader costs a numba
compilation, so the loaders here are few and shared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexpipe.pipeline import DataError, load_split, make_loader
from alexpipe.pipeline.augment import AugParams, FixedParams, normalise_affine, pca_matrix
from alexpipe.pipeline.augment.reference import augment_batch_reference
from alexpipe.pipeline.format.beton import beton_path, write_beton

from conftest import assert_matches_reference, batches_with_positions, write_dataset

pytestmark = [pytest.mark.ffcv, pytest.mark.slow]


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


def operations(stats, variant: str, tables):
    from alexpipe.pipeline.loaders.ffcv.ops import PCAJitterNormalise, TranslateFlip

    scale, shift = normalise_affine(stats)
    return (compiled(TranslateFlip(tables.geometry)),
            compiled(PCAJitterNormalise(pca_matrix(stats, variant), scale, shift, tables.alpha)))


@pytest.mark.real_data
@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_operations_equal_the_reference_and_read_the_table_when_they_run(real_data, variant):
    from alexpipe.pipeline.loaders.ffcv.ops import ParamTables

    split = load_split(real_data, "train")
    positions = np.random.default_rng(3).choice(len(split), 256, replace=False)
    images = split.images[positions].numpy()
    tables = ParamTables(len(split))
    translate, jitter = operations(split.meta.stats, variant, tables)
    outs = []
    for seed in (2, 4):  # refilled after compilation: the compiled code reads the live table
        params = AugParams.random(len(split), 0.5, np.random.default_rng(seed))  # sigma 0.5: the clamp matters
        tables.fill(params)
        out = jitter(translate(images, positions), positions)
        p = params.take(positions)
        ref = augment_batch_reference(images, p.dx, p.dy, p.flip, p.alpha, split.meta.stats, variant)
        np.testing.assert_allclose(out.transpose(0, 3, 1, 2), ref, rtol=0, atol=1e-4)
        outs.append(out.copy())
    assert np.mean(np.any(outs[0] != outs[1], axis=(1, 2, 3))) > 0.99


def by_position(loader, epoch: int) -> dict[int, torch.Tensor]:
    loader.set_epoch(epoch)
    return {int(i): x[k] for x, _, positions in batches_with_positions(loader) for k, i in enumerate(positions)}


@pytest.fixture(scope="module")
def cpu_epoch(real_data) -> dict[int, torch.Tensor]:
    """Epoch 3 of 640 training images, numba path; num_workers above the core count (clamped)."""
    loader = make_loader(real_data, "train", "ffcv", batch_size=64, indices=np.arange(640), seed=9, num_workers=16)
    return by_position(loader, 3)


@pytest.mark.real_data
def test_augmentation_depends_on_seed_epoch_and_image_only(real_data, cpu_epoch):
    """One thread instead of two, and rank 1 of 2 instead of a single rank: each image gets the same tensor."""
    loader = make_loader(real_data, "train", "ffcv", batch_size=64, indices=np.arange(640), seed=9, num_workers=1,
                         rank=1, world_size=2)
    shard = by_position(loader, 3)
    assert len(shard) == 320
    for pos, x in shard.items():
        assert torch.equal(x, cpu_epoch[pos])


@pytest.mark.real_data
def test_device_tail_equals_the_numba_path(real_data, cpu_epoch):
    """The GPU path (jitter + normalise as torch ops after ToDevice), run on the CPU."""
    loader = make_loader(real_data, "train", "ffcv", jitter_on="device", batch_size=64, indices=np.arange(640),
                         seed=9)
    tail = by_position(loader, 3)
    assert tail.keys() == cpu_epoch.keys()
    for pos, x in tail.items():
        torch.testing.assert_close(x, cpu_epoch[pos], rtol=0, atol=1e-5)


@pytest.mark.real_data
@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_device_tail_equals_the_reference_on_given_params(real_data, variant):
    split = load_split(real_data, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(5))
    loader = make_loader(real_data, "train", "ffcv", jitter_on="device", batch_size=100, pca=variant,
                         param_source=FixedParams(params), indices=np.arange(300), channels_last=True)
    for x, y, positions in batches_with_positions(loader):
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert_matches_reference(x, split, positions, params, variant)
        assert torch.equal(y, split.labels[positions])


@pytest.mark.real_data
def test_one_loader_across_epochs_with_an_early_break(real_data):
    """set_epoch on a reused loader (no rebuild): the shared epoch order, reproducible, after an abandoned epoch."""
    split = load_split(real_data, "train")
    params = AugParams.random(len(split), 0.1, np.random.default_rng(6))
    loader = make_loader(real_data, "train", "ffcv", batch_size=100, indices=np.arange(1050), seed=7,
                         param_source=FixedParams(params))
    loader.set_epoch(0)
    it = iter(loader)
    first = next(it)
    it.close()  # abandon epoch 0 after one batch
    loader.set_epoch(1)
    epoch1 = [tuple(t.clone() for t in b) for b in loader]
    assert len(epoch1) == len(loader) == len(loader._ffcv) == 10
    order = loader.order(1)
    for k, (x, _) in enumerate(epoch1):  # FFCV decoded the shared order, tail dropped
        assert_matches_reference(x, split, order[k * 100:(k + 1) * 100], params, "blog")
    loader.set_epoch(1)
    for a, b in zip(epoch1, loader):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    loader.set_epoch(0)
    again = next(iter(loader))
    assert all(torch.equal(u, v) for u, v in zip(first, again))


@pytest.mark.real_data
def test_batches_are_fresh_tensors_not_ffcv_buffers(real_data):
    """FFCV recycles its output buffers; every yielded batch must survive later ones (float32 channels_last is
    the case where a permute alone would have returned a view of FFCV's buffer)."""
    loader = make_loader(real_data, "test", "ffcv", batch_size=50, channels_last=True, indices=np.arange(500))
    kept = batches_with_positions(loader)
    assert len(kept) == 10
    split = load_split(real_data, "test")
    for x, y, positions in kept:
        assert_matches_reference(x, split, positions, None, "blog", atol=1e-5)
        assert torch.equal(y, split.labels[positions])


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


@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["blog", "paper"])
def test_cuda_matches_the_reference_and_the_cpu(synthetic_data, variant):
    split = load_split(synthetic_data, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(6))
    loader = make_loader(synthetic_data, "train", "ffcv", device="cuda", batch_size=128, pca=variant,
                         param_source=FixedParams(params), indices=np.arange(512), dtype=torch.bfloat16,
                         channels_last=True)
    for x, y, positions in batches_with_positions(loader):
        assert x.dtype == torch.bfloat16  # (batches_with_positions brought them to the CPU)
        assert_matches_reference(x, split, positions, params, variant, atol=2e-2, rtol=1e-2)  # bf16 rounding
        assert torch.equal(y, split.labels[positions])
    own = {d: make_loader(synthetic_data, "train", "ffcv", device=d, batch_size=128, pca=variant, seed=1,
                          indices=np.arange(512)) for d in ("cpu", "cuda")}
    a, b = by_position(own["cpu"], 2), by_position(own["cuda"], 2)
    for pos, x in a.items():
        torch.testing.assert_close(b[pos].cpu(), x, rtol=0, atol=1e-4)
