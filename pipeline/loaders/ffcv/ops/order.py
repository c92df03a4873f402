"""The shared epoch order (base.epoch_order) as an FFCV traversal order.

Why not FFCV's own orders: `OrderOption.RANDOM` shuffles with
`default_rng(seed + epoch)` (so seed 0 / epoch 1 repeats seed 1 / epoch 0),
and with `distributed=True` both RANDOM and SEQUENTIAL shard through torch's
`DistributedSampler(drop_last=False)`, which pads every rank to the same
length by repeating samples: an eval split then visits some images twice, and
a training epoch can hand the same image to two ranks. The shared order
shuffles by (seed, epoch), drops the tail that does not divide evenly for
training, keeps every image exactly once for eval, and gives each rank every
world_size-th entry: disjoint shards, as every other backend has.

FFCV 1.0.2 accepts a custom order as an *instance* of TraversalOrder and calls
it with the Loader (`isinstance(order, TraversalOrder)` then `order(loader)`),
so this class is built without a loader and binds to it when called.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ffcv.traversal_order.base import TraversalOrder


class EpochOrder(TraversalOrder):
    """Visits `order_of(epoch)`: this rank's split positions for that epoch, in order."""

    def __init__(self, order_of: Callable[[int], np.ndarray]):
        self._order_of = order_of

    def __call__(self, loader) -> "EpochOrder":
        super().__init__(loader)
        return self

    def sample_order(self, epoch: int) -> Sequence[int]:
        return np.asarray(self._order_of(epoch), dtype=np.int64)
