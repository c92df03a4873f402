"""What every backend shares: its configuration, the epoch, the batch contract (docs/design.md, "The loader
contract", which also says how to add a backend).

Iterating a loader fixes one `Epoch` (its order, its augmentation parameters,
its batches' positions); the backend makes the images of that epoch's
batches, in order (`_images`), and the labels come from the same epoch, so a
batch's labels cannot be another batch's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ..augment import PCA_VARIANTS, AugParams, ParamSource, RandomParams
from ..augment.batched import to_layout
from ..device import to_device
from ..format.split import Split, load_split

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class LoaderConfig:
    """Everything a backend needs to know; `make_loader` fills the defaults."""

    root: Path
    split: str
    batch_size: int = 128
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    augmented: Optional[bool] = None  # default: the train split only
    pca: str = "blog"  # blog | paper | off
    pca_sigma: float = 0.1
    seed: int = 0
    shuffle: Optional[bool] = None  # default: train split only
    drop_last: Optional[bool] = None  # default: train split only
    rank: int = 0
    world_size: int = 1
    num_workers: int = 2  # torchvision workers, DALI / FFCV threads
    indices: Optional[np.ndarray] = None  # restrict to these positions of the split (e.g. --subset)
    param_source: Optional[ParamSource] = None  # default: RandomParams(seed, pca_sigma)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.device = torch.device(self.device)
        is_train = self.split == "train"
        self.augmented = is_train if self.augmented is None else self.augmented
        self.shuffle = is_train if self.shuffle is None else self.shuffle
        self.drop_last = is_train if self.drop_last is None else self.drop_last
        if self.pca not in PCA_VARIANTS:
            raise ValueError(f"pca must be one of {', '.join(PCA_VARIANTS)}, got {self.pca!r}")
        if not self.pca_sigma >= 0:
            raise ValueError(f"pca_sigma must be a non-negative number, got {self.pca_sigma}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype}")
        if self.param_source is None:
            self.param_source = RandomParams(self.seed, self.pca_sigma)

    @property
    def jitter(self) -> bool:
        return self.augmented and self.pca != "off"


def epoch_order(positions: np.ndarray, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
                equal_shards: bool) -> np.ndarray:
    """This rank's split positions for `epoch`, in visiting order.

    The permutation depends only on (seed, epoch), so every rank computes the
    same one and takes every world_size-th entry: shards are disjoint. With
    `equal_shards` (training) the tail that does not divide evenly is dropped
    so all ranks step together; otherwise (eval) every image is kept once.
    """
    order = positions
    if shuffle:
        order = positions[np.random.default_rng([seed, epoch]).permutation(len(positions))]
    if equal_shards:
        order = order[: len(order) // world_size * world_size]
    return order[rank::world_size]


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


@dataclass(frozen=True)
class Epoch:
    """One epoch of one loader, fixed when its iteration begins: what every batch of it holds."""

    number: int
    order: np.ndarray  # this rank's split positions, in visiting order
    params: Optional[AugParams]  # every split image's augmentation parameters (None: not augmented)
    batch_size: int
    drop_last: bool

    def __len__(self) -> int:
        return num_batches(len(self.order), self.batch_size, self.drop_last)

    def positions(self, k: int) -> np.ndarray:
        """The split positions batch k holds."""
        return self.order[k * self.batch_size:(k + 1) * self.batch_size]

    @property
    def visited(self) -> np.ndarray:
        """The positions of every batch, in order (the tail that makes no whole batch is not visited)."""
        return self.order[:len(self) * self.batch_size]


class BaseLoader(ABC):
    """What the backends share; a backend implements `_images`, and may name its own options in `OPTIONS`
    (which `make_loader` passes to its constructor as keywords).

    Labels never travel with the images: the split's labels live on the device
    from the start, and an epoch's labels are one gather there by its order.
    """

    OPTIONS: tuple[str, ...] = ()

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None):
        self.cfg = cfg
        self.split = split if split is not None else load_split(cfg.root, cfg.split)
        n = len(self.split)
        if cfg.indices is not None:
            positions = np.asarray(cfg.indices, dtype=np.int64)
            if positions.size and (positions.min() < 0 or positions.max() >= n):
                raise ValueError(f"indices must lie in 0..{n - 1}")
        else:
            positions = np.arange(n, dtype=np.int64)
        self.positions = positions
        self.epoch_number = 0
        self._device_labels: Optional[torch.Tensor] = None  # the split's, on the device: made once

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch_number = int(epoch)

    def order(self, epoch: Optional[int] = None) -> np.ndarray:
        """Split positions this rank visits in `epoch` (default: the chosen one), before batching."""
        c = self.cfg
        e = self.epoch_number if epoch is None else int(epoch)
        return epoch_order(self.positions, c.seed, e, c.shuffle, c.rank, c.world_size, equal_shards=c.drop_last)

    def epoch(self, number: Optional[int] = None) -> Epoch:
        """The epoch `number` (default: the chosen one): its order and, when augmenting, its parameters."""
        c = self.cfg
        e = self.epoch_number if number is None else int(number)
        params = c.param_source.for_epoch(e, len(self.split)) if c.augmented else None
        return Epoch(e, self.order(e), params, c.batch_size, c.drop_last)

    def __len__(self) -> int:
        return num_batches(len(self.order()), self.cfg.batch_size, self.cfg.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches: the backend's images in the requested dtype and layout, with their labels."""
        epoch = self.epoch()
        labels = self._labels(epoch)
        images = self._images(epoch)
        try:
            for k in range(len(labels)):
                x = next(images, None)
                if x is None:
                    raise RuntimeError(f"{type(self).__name__} made {k} batches of an epoch of {len(labels)}")
                yield to_layout(x, self.cfg.dtype, self.cfg.channels_last), labels[k]
            if next(images, None) is not None:  # (and lets the backend finish its epoch)
                raise RuntimeError(f"{type(self).__name__} made more batches than its epoch has")
        finally:
            images.close()

    def _labels(self, epoch: Epoch) -> tuple[torch.Tensor, ...]:
        """The epoch's labels on the device, batch by batch: one gather by its order, copied there once."""
        if self._device_labels is None:
            self._device_labels = to_device(self.split.labels, self.cfg.device)
        order = to_device(torch.from_numpy(epoch.visited), self.cfg.device)
        return self._device_labels[order].split(epoch.batch_size) if len(epoch) else ()

    @abstractmethod
    def _images(self, epoch: Epoch) -> Iterator[torch.Tensor]:
        """The images of `epoch`'s batches, in order: batch k holds `epoch.positions(k)`, NCHW, any float dtype,
        in memory the backend's library will not reuse (the cast to the requested dtype may be a no-op)."""
