"""Counter-based randomness: every random number is a hash of (epoch key, sample index, stream).

FFCV's own random transforms draw from numba's per-thread `np.random`, which
nobody seeds per epoch and whose draws depend on which worker thread handled
which sample; they cannot give identical batches for identical (seed, epoch).
A hash of (key, index, stream) can: it needs no state, is the same in every
thread and on every rank, and a sample's augmentation depends only on
(seed, epoch, its split position), not on the shuffle, the batch it lands in or
the sharding. The mixer is splitmix64's finaliser (a bijection on 64 bits with
full avalanche), applied twice so that neighbouring indices and neighbouring
keys give unrelated streams.

Streams: 0 dx, 1 dy, 2 flip, 3-6 two Box-Muller pairs for the three alphas.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ...augment import MAX_OFFSET

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S11, _S27, _S30, _S31, _S63 = (np.uint64(s) for s in (11, 27, 30, 31, 63))
_OFFSETS = np.uint64(MAX_OFFSET + 1)
_TWO_PI = 2.0 * math.pi
_INV_2_53 = 1.0 / 9007199254740992.0


@numba.njit(cache=True)
def mix64(z):
    """splitmix64's finaliser: a well-mixing bijection of uint64."""
    z = np.uint64(z)
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(cache=True)
def draw(key, index, stream):
    """Random uint64 number `stream` of sample `index` under the epoch `key`."""
    sample = mix64(np.uint64(key) ^ mix64(np.uint64(index) * _GOLDEN + _GOLDEN))
    return mix64(sample + np.uint64(stream + 1) * _GOLDEN)


@numba.njit(cache=True)
def unit(bits):
    """uint64 -> float64 uniform on [0, 1) from the top 53 bits."""
    return np.float64(bits >> _S11) * _INV_2_53


@numba.njit(cache=True)
def geometry(key, index):
    """(dx, dy, flip) of one sample: offsets uniform on 0..MAX_OFFSET, flip with probability 1/2."""
    dx = np.int64(draw(key, index, 0) % _OFFSETS)
    dy = np.int64(draw(key, index, 1) % _OFFSETS)
    flip = (draw(key, index, 2) >> _S63) != np.uint64(0)
    return dx, dy, flip


@numba.njit(cache=True)
def alpha(key, index, sigma):
    """Three independent N(0, sigma^2) values (Box-Muller; the log's argument is in (0, 1])."""
    r0 = math.sqrt(-2.0 * math.log(1.0 - unit(draw(key, index, 3))))
    t0 = _TWO_PI * unit(draw(key, index, 4))
    r1 = math.sqrt(-2.0 * math.log(1.0 - unit(draw(key, index, 5))))
    t1 = _TWO_PI * unit(draw(key, index, 6))
    return sigma * r0 * math.cos(t0), sigma * r0 * math.sin(t0), sigma * r1 * math.cos(t1)


@numba.njit(cache=True)
def sample_params(key, indices, sigma):
    """All parameters for a batch, as arrays (dx, dy, flip, alpha (B, 3) float32): for callers outside FFCV."""
    n = len(indices)
    dx = np.empty(n, np.int64)
    dy = np.empty(n, np.int64)
    flip = np.empty(n, np.bool_)
    alphas = np.empty((n, 3), np.float32)
    for i in range(n):
        dx[i], dy[i], flip[i] = geometry(key, indices[i])
        a0, a1, a2 = alpha(key, indices[i], sigma)
        alphas[i, 0] = a0
        alphas[i, 1] = a1
        alphas[i, 2] = a2
    return dx, dy, flip, alphas
