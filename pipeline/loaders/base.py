"""What every backend shares: its configuration, the epoch order, the batch contract.

A loader yields `(images, labels)` (or `(images, labels, index)` with
`with_index=True`, the hook tests use to check coverage): images normalised,
NCHW in `dtype` (channels_last memory format when asked) on `device`, labels
int64 on `device`, index int64 = positions in the split file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ..augment import AugParams, PCA_VARIANTS
from ..fileformat import Split, load_split

BACKENDS = ("resident", "dali", "ffcv", "torchvision")


@dataclass
class LoaderConfig:
    """Everything a backend needs to know; `make_loader` fills the defaults."""

    root: Path
    split: str
    batch_size: int = 128
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    augment: Optional[bool] = None  # default: train split only
    pca: str = "blog"  # blog | paper | off
    pca_sigma: float = 0.1
    seed: int = 0
    shuffle: Optional[bool] = None  # default: train split only
    drop_last: Optional[bool] = None  # default: train split only
    rank: int = 0
    world_size: int = 1
    num_workers: int = 2  # torchvision workers, DALI / FFCV threads
    indices: Optional[np.ndarray] = None  # restrict to these positions of the split (e.g. --subset)
    params: Optional[AugParams] = None  # test hook: explicit parameters, indexed by split position
    with_index: bool = False  # test hook: also yield each image's split position

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.device = torch.device(self.device)
        is_train = self.split == "train"
        self.augment = is_train if self.augment is None else self.augment
        self.shuffle = is_train if self.shuffle is None else self.shuffle
        self.drop_last = is_train if self.drop_last is None else self.drop_last
        if self.pca not in PCA_VARIANTS:
            raise ValueError(f"pca must be one of {', '.join(PCA_VARIANTS)}, got {self.pca!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype}")

    @property
    def jitter(self) -> bool:
        return self.augment and self.pca != "off"


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


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several non-negative integers (seed, epoch, rank, index ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


class BaseLoader(ABC):
    """Epoch bookkeeping shared by the backends; subclasses implement `_batches`."""

    backend = "base"

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
        if cfg.params is not None and len(cfg.params) != n:
            raise ValueError(f"params must cover the whole split ({n} images), got {len(cfg.params)}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def order(self, epoch: Optional[int] = None) -> np.ndarray:
        """Split positions this rank visits in `epoch`, before batching."""
        c = self.cfg
        return epoch_order(self.positions, c.seed, self.epoch if epoch is None else epoch, c.shuffle, c.rank,
                           c.world_size, equal_shards=c.drop_last)

    @property
    def num_images(self) -> int:
        """Images yielded per epoch on this rank."""
        n = len(self.order())
        return n // self.cfg.batch_size * self.cfg.batch_size if self.cfg.drop_last else n

    def __len__(self) -> int:
        return num_batches(len(self.order()), self.cfg.batch_size, self.cfg.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self._batches()

    @abstractmethod
    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield this epoch's batches (see the module docstring for their contract)."""

    def _emit(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (images, labels, index) if self.cfg.with_index else (images, labels)
