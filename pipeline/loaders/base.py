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


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: through pinned memory, asynchronously, on CUDA.

    The pinned copy is freed only once the transfer is done (torch's caching
    host allocator records the stream), so the caller may drop it at once.
    """
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class BaseLoader(ABC):
    """Epoch bookkeeping shared by the backends; subclasses implement `_batches`.

    Labels and positions never travel with the images: the split's labels live
    on the device from the start and the epoch's order is copied there once, so
    batch k's labels are a gather on the device (`_emit`), whatever the backend.
    """

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
        self._order: Optional[tuple[int, np.ndarray]] = None  # (epoch, order): one permutation per epoch
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

    def _emit(self, images: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """Batch k: the backend's images, with labels (and positions) gathered on the device."""
        if self._device_labels is None:
            self._device_labels = to_device(self.split.labels, self.cfg.device)
        index = self.batch_index(k)
        labels = self._device_labels[index]
        return (images, labels, index) if self.cfg.with_index else (images, labels)
