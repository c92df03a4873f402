"""The resident loader: the whole uint8 split lives on the device.

Each step gathers a batch by the epoch's permutation and augments it with a
few batched tensor ops (augment/batched.py): no workers, no per-image Python,
no host-to-device copies after the first but one parameter table per epoch.
The technique of the fastest CIFAR-10 trainers.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from ..augment.batched import BatchParams, Normaliser, augment, prepare_source
from ..fileformat import Split
from .base import BaseLoader, LoaderConfig


class ResidentLoader(BaseLoader):
    """See the module docstring. `compile` runs the augmentation through torch.compile (`compile_mode`:
    torch's mode, e.g. "reduce-overhead" for CUDA graphs; every training batch has the same shape)."""

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None, compile: bool = False,
                 compile_mode: Optional[str] = None):
        super().__init__(cfg, split)
        dev = cfg.device
        # one transfer, then a device-side rearrangement into planes (padded + mirrored for training)
        images = self.split.images.to(dev)
        self.source = prepare_source(images) if cfg.augment else images.permute(0, 3, 1, 2).contiguous()
        del images
        self.norm = Normaliser(self.split.meta.stats, cfg.pca, dev)
        self._table: Optional[tuple[int, BatchParams]] = None
        # the plain batched path is the reference; torch.compile fuses it into a few kernels where that pays
        mode = None if compile_mode in (None, "default") else compile_mode
        self._augment = torch.compile(augment, dynamic=False, mode=mode) if compile else augment

    def device_params(self) -> BatchParams:
        """This epoch's parameters for every image of the split, on the device (one copy per epoch)."""
        if self._table is None or self._table[0] != self.epoch:
            self._table = (self.epoch, BatchParams.from_params(self.epoch_params(), self.cfg.device))
        return self._table[1]

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        c = self.cfg
        table = self.device_params() if c.augment else None
        for k in range(len(self)):
            x = self._augment(self.source, self.batch_index(k), table, self.norm, c.dtype, c.channels_last,
                              c.jitter)
            yield self._emit(x, k)
