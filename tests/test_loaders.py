"""Every backend against the one meaning of the augmentation, and the batch contract.

Parametrised over all four backends: each must match the NumPy reference on
identical parameters, cover its split as promised, shard disjointly, and its own
random generator must have the right statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexpipe.pipeline import load_split, make_loader
from alexpipe.pipeline.augment import AugParams, pca_matrix
from alexpipe.pipeline.augment.reference import augment_batch_reference, normalise_image

from conftest import MARKER_LEFT, MARKER_RIGHT

BACKENDS = ["resident", "torchvision", "dali", "ffcv"]


def batches(loader, limit=None):
    out = []
    for k, b in enumerate(loader):
        if limit is not None and k >= limit:
            break
        out.append(tuple(t.cpu() for t in b))
    return out


@pytest.mark.parametrize("variant", ["blog", "paper"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_on_explicit_params(real_data, backend, variant):
    split = load_split(real_data, "train")
    # sigma 0.5 so that the clamp to 0..255 is exercised too
    params = AugParams.random(len(split), 0.5, np.random.default_rng(1))
    loader = make_loader(real_data, "train", backend, batch_size=64, pca=variant, params=params,
                         with_index=True, indices=np.arange(2000), seed=3)
    checked = 0
    for x, y, idx in batches(loader, limit=3):
        idx = idx.numpy()
        p = params.take(idx)
        ref = augment_batch_reference(split.images[idx].numpy(), p.dx, p.dy, p.flip, p.alpha,
                                      split.meta.stats, variant)
        assert x.dtype == torch.float32 and tuple(x.shape) == (64, 3, 32, 32)
        np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=1e-4)
        assert torch.equal(y, split.labels[idx])
        checked += len(idx)
    assert checked == 192


@pytest.mark.parametrize("split_name", ["val", "test"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_covers_split_once_and_is_only_normalised(real_data, backend, split_name):
    split = load_split(real_data, split_name)
    loader = make_loader(real_data, split_name, backend, batch_size=300, with_index=True)
    got = batches(loader)
    assert len(got) == len(loader) == -(-len(split) // 300)
    index = np.concatenate([i.numpy() for _, _, i in got])
    assert sorted(index.tolist()) == list(range(len(split)))  # every image exactly once
    assert len(got[-1][1]) == len(split) % 300 or len(got[-1][1]) == 300  # last batch partial
    for x, y, i in got[:2]:
        ref = np.stack([normalise_image(split.images[j].numpy(), split.meta.stats) for j in i.numpy()])
        np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=1e-5)
        assert torch.equal(y, split.labels[i])


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_epoch_drops_last_and_never_repeats(real_data, backend):
    loader = make_loader(real_data, "train", backend, batch_size=100, with_index=True, indices=np.arange(1050))
    got = batches(loader)
    assert len(got) == len(loader) == 10
    assert all(len(y) == 100 for _, y, _ in got)
    index = np.concatenate([i.numpy() for _, _, i in got])
    assert len(set(index.tolist())) == 1000 and index.max() < 1050


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_are_disjoint_and_cover(real_data, backend):
    n = 1001
    seen = {}
    for split_name in ("train", "test"):
        for rank in (0, 1):
            loader = make_loader(real_data, split_name, backend, batch_size=50, rank=rank, world_size=2,
                                 with_index=True, indices=np.arange(n), seed=5)
            loader.set_epoch(2)
            seen[split_name, rank] = np.concatenate([i.numpy() for _, _, i in batches(loader)])
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
    from alexpipe.pipeline.stats import ChannelStats

    stats = ChannelStats(**REALISTIC_STATS)
    p = AugParams.random(400, 0.1, np.random.default_rng(0))
    imgs = np.broadcast_to(marker_image(), (400, 32, 32, 3))
    x = augment_batch_reference(imgs, p.dx, p.dy, p.flip, p.alpha, stats, "blog")
    dx, dy, flip, alpha = recover_params(x, stats, "blog")
    assert (dx == p.dx).all() and (dy == p.dy).all() and (flip == p.flip).all()
    np.testing.assert_allclose(alpha, p.alpha, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_own_randomness_has_the_right_statistics(marker_data, backend):
    split = load_split(marker_data, "train")
    sigma = 0.1
    loader = make_loader(marker_data, "train", backend, batch_size=250, pca="blog", pca_sigma=sigma, seed=11)
    xs = np.concatenate([x.numpy() for x, _ in batches(loader)])
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_epochs_differ_and_seed_epoch_reproduces(real_data, backend):
    def epoch_batches(epoch, seed=0):
        loader = make_loader(real_data, "train", backend, batch_size=64, indices=np.arange(640), seed=seed,
                             with_index=True)
        loader.set_epoch(epoch)
        return batches(loader, limit=3)

    a, b, c = epoch_batches(1), epoch_batches(1), epoch_batches(2)
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][2], c[0][2])  # a different shuffle
    # the same image in two epochs gets a different augmentation
    pos = {int(i): (k, j) for k, (_, _, idx) in enumerate(c) for j, i in enumerate(idx)}
    common = [(k, j, pos[int(i)]) for k, (_, _, idx) in enumerate(a) for j, i in enumerate(idx) if int(i) in pos]
    assert common
    diffs = [not torch.equal(a[k][0][j], c[k2][0][j2]) for k, j, (k2, j2) in common]
    assert np.mean(diffs) > 0.9
