"""The resident loader: the whole uint8 split lives on the device.

Each step gathers a batch by the epoch's permutation and augments it with a
few batched tensor ops (augment/batched.py): no workers, no per-image Python,
no host-to-device copies after the first. The technique of the fastest
CIFAR-10 trainers.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from ..augment.batched import BatchParams, Normaliser, augment, prepare_source
from ..fileformat import Split
from .base import BaseLoader, LoaderConfig, mix_seed


class ResidentLoader(BaseLoader):
    backend = "resident"

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None, compile: bool = False,
                 compile_mode: Optional[str] = None):
        super().__init__(cfg, split)
        dev = cfg.device
        # one transfer, then a device-side rearrangement into planes (padded + mirrored for training)
        images = self.split.images.to(dev)
        self.source = prepare_source(images) if cfg.augment else images.permute(0, 3, 1, 2).contiguous()
        del images
        self.norm = Normaliser(self.split.meta.stats, cfg.pca, dev)
        self.explicit = cfg.params
        self._explicit_table: Optional[BatchParams] = None
        # the plain batched path is the reference; torch.compile fuses it into a few kernels where that pays
        # (static shapes: every training batch has the same size; "reduce-overhead" also captures CUDA graphs)
        mode = None if compile_mode in (None, "default") else compile_mode
        self._augment = torch.compile(augment, dynamic=False, mode=mode) if compile else augment

    def epoch_params(self) -> BatchParams:
        """Parameters for every image of the split this epoch, drawn at once on the device.

        Drawn from (seed, epoch) alone, so an image's augmentation does not depend
        on the rank, the world size or the batch it lands in: one process and N
        processes see the same augmented data.
        """
        c = self.cfg
        if self.explicit is not None:
            if self._explicit_table is None:
                self._explicit_table = BatchParams.from_numpy(self.explicit, c.device)
            return self._explicit_table
        g = torch.Generator(device=c.device)
        g.manual_seed(mix_seed(c.seed, self.epoch))
        return BatchParams.sample(len(self.split), c.pca_sigma, g, c.device)

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        c = self.cfg
        table = self.epoch_params() if c.augment else None
        for k in range(len(self)):
            x = self._augment(self.source, self.batch_index(k), table, self.norm, c.dtype, c.channels_last,
                              c.jitter)
            yield self._emit(x, k)
