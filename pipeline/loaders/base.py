"""What every backend shares: its configuration, the epoch order, the batch contract.

A loader yields `(images, labels)`: images normalised, NCHW in `dtype`
(channels_last memory format when asked) on `device`, labels int64 on
`device`. Batch k holds the split positions `order()[k * batch_size:(k + 1) *
batch_size]` of its epoch. A backend only makes the images of a batch, in
NCHW of any float dtype; the labels, the final cast and the memory layout are
done here, once for all of them (`_emit`). How to add a backend:
docs/design.md, "The loader contract".
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


class BaseLoader(ABC):
    """Epoch bookkeeping shared by the backends; subclasses implement `_batches`.

    Labels and positions never travel with the images: the split's labels live
    on the device from the start and the epoch's order is copied there once, so
    batch k's labels are a gather on the device (`_emit`), whatever the backend.
    """

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
        self.epoch = 0
        self._order: Optional[tuple[int, np.ndarray]] = None  # (epoch, order): one permutation per epoch
        self._params: Optional[tuple[int, AugParams]] = None  # (epoch, the whole split's parameters)
        self._device_order: Optional[tuple[int, torch.Tensor]] = None
        self._device_labels: Optional[torch.Tensor] = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def order(self, epoch: Optional[int] = None) -> np.ndarray:
        """Split positions this rank visits in `epoch`, before batching (computed once per epoch)."""
        c = self.cfg
        e = self.epoch if epoch is None else int(epoch)
        if self._order is None or self._order[0] != e:
            self._order = (e, epoch_order(self.positions, c.seed, e, c.shuffle, c.rank, c.world_size,
                                          equal_shards=c.drop_last))
        return self._order[1]

    def epoch_params(self) -> AugParams:
        """Every split image's augmentation parameters this epoch (from the config's source, once per epoch)."""
        if self._params is None or self._params[0] != self.epoch:
            self._params = (self.epoch, self.cfg.param_source.for_epoch(self.epoch, len(self.split)))
        return self._params[1]

    def device_order(self) -> torch.Tensor:
        """This epoch's order as an int64 tensor on the device, copied there once per epoch."""
        if self._device_order is None or self._device_order[0] != self.epoch:
            self._device_order = (self.epoch, to_device(torch.from_numpy(self.order()), self.cfg.device))
        return self._device_order[1]

    def batch_index(self, k: int) -> torch.Tensor:
        """Split positions of this epoch's batch k, on the device."""
        b = self.cfg.batch_size
        return self.device_order()[k * b:(k + 1) * b]

    def __len__(self) -> int:
        return num_batches(len(self.order()), self.cfg.batch_size, self.cfg.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self._batches()

    @abstractmethod
    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield this epoch's batches (see the module docstring for their contract)."""

    def _emit(self, images: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k: the backend's NCHW images in the requested dtype and layout, and their labels, gathered on
        the device. `images` must not be a buffer the backend's library will reuse (the cast may be a no-op)."""
        if self._device_labels is None:
            self._device_labels = to_device(self.split.labels, self.cfg.device)
        return to_layout(images, self.cfg.dtype, self.cfg.channels_last), self._device_labels[self.batch_index(k)]
