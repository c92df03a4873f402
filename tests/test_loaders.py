"""Every backend against the one meaning of the augmentation, and the batch contract.

Parametrised over all four backends: each must match the NumPy reference on
given parameters and on the parameters its own epochs draw, cover its split
as promised, shard disjointly, and its augmentation must have the right
statistics. Which split positions a batch holds comes from the loader's
order; that the images are those images is what the comparisons with the
reference show.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexpipe.pipeline import load_split, make_loader
from alexpipe.pipeline.augment import AugParams, FixedParams, RandomParams, pca_matrix
from alexpipe.pipeline.augment.reference import augment_batch_reference

from conftest import BACKENDS, MARKER_LEFT, MARKER_RIGHT, assert_matches_reference, batches_with_positions


@pytest.mark.parametrize("backend", [pytest.param(b.values[0], id=b.id, marks=[m for m in b.marks if m.name != "slow"])
                                     for b in BACKENDS])
def test_every_installed_backend_matches_the_reference_on_synthetic_data(synthetic_data, backend):
    """The project's central invariant, on a fresh clone too: every backend makes the reference's values from
    the same parameters (both PCA variants, sigma 0.5 so the clamp is exercised) and pairs them with their
    labels. Fast on purpose: one small split, two batches per variant."""
    split = load_split(synthetic_data, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(2))
    for variant in ("blog", "paper"):
        loader = make_loader(synthetic_data, "train", backend, batch_size=100, pca=variant,
                             param_source=FixedParams(params), num_workers=1)
        got = batches_with_positions(loader, limit=2)
        assert len(got) == 2
        for x, y, positions in got:
            assert_matches_reference(x, split, positions, params, variant)
            assert torch.equal(y, split.labels[positions])


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["blog", "paper"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_on_given_params(real_data, backend, variant):
    split = load_split(real_data, "train")
    # sigma 0.5 so that the clamp to 0..255 is exercised too
    params = AugParams.random(len(split), 0.5, np.random.default_rng(1))
    loader = make_loader(real_data, "train", backend, batch_size=64, pca=variant, param_source=FixedParams(params),
                         indices=np.arange(2000), seed=3)
    got = batches_with_positions(loader, limit=3)
    for x, y, positions in got:
        assert x.dtype == torch.float32
        assert_matches_reference(x, split, positions, params, variant)
        assert torch.equal(y, split.labels[positions])
    assert sum(len(p) for _, _, p in got) == 192


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_draws_are_the_epochs_table_applied_as_the_reference(real_data, backend):
    """In training the parameters come from (seed, epoch): the batches are the reference applied with that
    epoch's table, so every backend augments every image identically."""
    split = load_split(real_data, "train")
    loader = make_loader(real_data, "train", backend, batch_size=100, indices=np.arange(1000), seed=8,
                         pca_sigma=0.3)
    loader.set_epoch(4)
    table = RandomParams(seed=8, sigma=0.3).for_epoch(4, len(split))
    for x, y, positions in batches_with_positions(loader, limit=2):
        assert_matches_reference(x, split, positions, table, "blog")


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("split_name", ["val", "test"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_covers_split_once_and_is_only_normalised(real_data, backend, split_name):
    split = load_split(real_data, split_name)
    loader = make_loader(real_data, split_name, backend, batch_size=300)
    got = batches_with_positions(loader)
    assert len(got) == len(loader) == -(-len(split) // 300)
    assert [len(y) for _, y, _ in got] == [300] * (len(got) - 1) + [len(split) - 300 * (len(got) - 1)]
    index = np.concatenate([p for _, _, p in got])
    assert sorted(index.tolist()) == list(range(len(split)))  # every image exactly once
    for x, y, positions in got:  # ... and each batch holds the images at those positions
        assert_matches_reference(x, split, positions, None, "blog", atol=1e-5)
        assert torch.equal(y, split.labels[positions])


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_epoch_drops_last_and_never_repeats(real_data, backend):
    split = load_split(real_data, "train")
    params = AugParams.random(len(split), 0.1, np.random.default_rng(2))
    loader = make_loader(real_data, "train", backend, batch_size=100, indices=np.arange(1050),
                         param_source=FixedParams(params))
    got = batches_with_positions(loader)
    assert len(got) == len(loader) == 10
    assert all(len(y) == 100 for _, y, _ in got)
    index = np.concatenate([p for _, _, p in got])
    assert len(set(index.tolist())) == 1000 and index.max() < 1050
    for x, _, positions in got[:3]:
        assert_matches_reference(x, split, positions, params, "blog")


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,channels_last", [(torch.bfloat16, True), (torch.float32, False),
                                                 (torch.float16, True)])
def test_shape_dtype_device_layout(real_data, backend, dtype, channels_last):
    loader = make_loader(real_data, "train", backend, batch_size=32, dtype=dtype, channels_last=channels_last,
                         indices=np.arange(64))
    x, y = next(iter(loader))
    assert x.shape == (32, 3, 32, 32) and x.dtype == dtype and x.device.type == "cpu"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt)
    assert y.dtype == torch.int64 and y.shape == (32,)


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_are_disjoint_and_cover(real_data, backend):
    n = 1001
    seen = {}
    for split_name in ("train", "test"):
        split = load_split(real_data, split_name)
        params = AugParams.random(len(split), 0.1, np.random.default_rng(3))
        for rank in (0, 1):
            loader = make_loader(real_data, split_name, backend, batch_size=50, rank=rank, world_size=2,
                                 indices=np.arange(n), seed=5, param_source=FixedParams(params))
            loader.set_epoch(2)
            got = batches_with_positions(loader)
            for x, _, positions in got[:2]:  # the images are those of the rank's positions
                assert_matches_reference(x, split, positions, params if split_name == "train" else None, "blog")
            seen[split_name, rank] = np.concatenate([p for _, _, p in got])
    a, b = set(seen["train", 0].tolist()), set(seen["train", 1].tolist())
    assert not a & b and len(a) == len(b) == 500  # 1001 // 2 = 500 per rank, 10 full batches each
    a, b = seen["test", 0].tolist(), seen["test", 1].tolist()
    assert not set(a) & set(b) and sorted(a + b) == list(range(n))


def recover_params(x: np.ndarray, stats, variant: str) -> tuple[np.ndarray, ...]:
    """Read (dx, dy, flip, alpha) back from augmented marker images (see conftest.marker_image)."""
    mean = np.asarray(stats.mean)[None, :, None, None]
    std = np.asarray(stats.std)[None, :, None, None]
    px = x.astype(np.float64) * std + mean  # back to 0..255
    level = px.mean(axis=1)  # (B, H, W)
    pad = level < (MARKER_LEFT / 2)
    rows_pad = pad.all(axis=2)  # (B, H)
    lead = np.argmin(rows_pad, axis=1)
    trail = np.argmin(rows_pad[:, ::-1], axis=1)
    dy = 4 - lead + trail
    middle = level[:, 16, :]
    interior = ~pad[:, 16, :]
    # first and last interior columns: which side holds the dark half tells the flip
    first = np.argmax(interior, axis=1)
    last = 31 - np.argmax(interior[:, ::-1], axis=1)
    b = np.arange(len(x))
    flip = middle[b, first] > middle[b, last]
    lead_c = np.where(flip, 31 - last, first)  # pad columns on the left of the unflipped window
    trail_c = np.where(flip, first, 31 - last)
    dx = 4 - lead_c + trail_c
    # interior of the dark half (2 pixels in from the centre row's dark edge) minus its true value
    col = np.where(flip, last - 1, first + 1)
    delta = px[b, :, 16, col] - MARKER_LEFT
    alpha = np.linalg.solve(pca_matrix(stats, variant).astype(np.float64), delta.T).T
    return dx, dy, flip, alpha


def test_recover_params_inverts_the_reference():
    """The statistics test below is only as good as this decoder: check it on the reference."""
    from conftest import REALISTIC_STATS, marker_image
    from alexpipe.pipeline.format.stats import ChannelStats

    stats = ChannelStats(**REALISTIC_STATS)
    p = AugParams.random(400, 0.1, np.random.default_rng(0))
    imgs = np.broadcast_to(marker_image(), (400, 32, 32, 3))
    x = augment_batch_reference(imgs, p.dx, p.dy, p.flip, p.alpha, stats, "blog")
    dx, dy, flip, alpha = recover_params(x, stats, "blog")
    assert (dx == p.dx).all() and (dy == p.dy).all() and (flip == p.flip).all()
    np.testing.assert_allclose(alpha, p.alpha, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_augmentation_has_the_right_statistics(marker_data, backend):
    """End to end, from the images: the offsets, flips and alphas a loader applies in training."""
    split = load_split(marker_data, "train")
    sigma = 0.1
    loader = make_loader(marker_data, "train", backend, batch_size=250, pca="blog", pca_sigma=sigma, seed=11)
    xs = np.concatenate([x.numpy() for x, _ in loader])
    assert len(xs) == 3000
    dx, dy, flip, alpha = recover_params(xs, split.meta.stats, "blog")
    assert abs(flip.mean() - 0.5) < 0.04
    counts = np.zeros((9, 9))
    np.add.at(counts, (dy, dx), 1)
    expected = len(xs) / 81
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert counts.min() > 0 and chi2 < 140  # 80 dof: p ~ 1e-4 at 140
    assert np.abs(alpha.mean(axis=0)).max() < 0.01
    np.testing.assert_allclose(alpha.std(axis=0), sigma, rtol=0.08)


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_epochs_differ_and_seed_epoch_reproduces(real_data, backend):
    def epoch_batches(epoch, seed=0):
        loader = make_loader(real_data, "train", backend, batch_size=64, indices=np.arange(640), seed=seed)
        loader.set_epoch(epoch)
        return batches_with_positions(loader, limit=3)

    a, b, c = epoch_batches(1), epoch_batches(1), epoch_batches(2)
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert np.array_equal(ia, ib) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not np.array_equal(a[0][2], c[0][2])  # a different shuffle
    # the same image in two epochs gets a different augmentation
    pos = {int(i): (k, j) for k, (_, _, idx) in enumerate(c) for j, i in enumerate(idx)}
    common = [(k, j, pos[int(i)]) for k, (_, _, idx) in enumerate(a) for j, i in enumerate(idx) if int(i) in pos]
    assert common
    diffs = [not torch.equal(a[k][0][j], c[k2][0][j2]) for k, j, (k2, j2) in common]
    assert np.mean(diffs) > 0.9


def test_random_params_have_the_right_statistics_and_depend_on_seed_and_epoch_only():
    n, sigma = 40_000, 0.1
    p = RandomParams(seed=3, sigma=sigma).for_epoch(0, n)
    counts = np.zeros((9, 9))
    np.add.at(counts, (p.dy, p.dx), 1)
    expected = n / 81
    assert ((counts - expected) ** 2 / expected).sum() < 140  # 80 dof: p ~ 1e-4 at 140
    assert abs(p.flip.mean() - 0.5) < 0.01 and np.abs(p.alpha.mean(axis=0)).max() < 0.003
    np.testing.assert_allclose(p.alpha.std(axis=0), sigma, rtol=0.02)
    assert abs(np.mean(np.abs(p.alpha) < sigma) - 0.6827) < 0.01  # normal, not merely the right variance
    corr = np.corrcoef(np.column_stack([p.dx, p.dy, p.flip, p.alpha]).astype(np.float64).T) - np.eye(6)
    assert np.abs(corr).max() < 0.03  # independent draws
    again = RandomParams(seed=3, sigma=sigma).for_epoch(0, n)
    assert all(np.array_equal(u, v) for u, v in zip((p.dx, p.dy, p.flip, p.alpha),
                                                    (again.dx, again.dy, again.flip, again.alpha)))
    other = RandomParams(seed=3, sigma=sigma).for_epoch(1, n)
    assert np.mean(other.alpha[:, 0] == p.alpha[:, 0]) < 0.001


def test_one_door_for_every_backend_option(small_data):
    """Backend options go through make_loader; one a backend does not take is refused by name."""
    assert make_loader(small_data, "train", "resident", batch_size=64).cfg.batch_size == 64
    with pytest.raises(ValueError, match="resident backend takes no option use_plugin"):
        make_loader(small_data, "train", "resident", use_plugin=False)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        make_loader(small_data, "train", "nope")
    with pytest.raises(ValueError, match="pca_sigma must be a non-negative number"):
        make_loader(small_data, "train", "resident", pca_sigma=-1.0)
