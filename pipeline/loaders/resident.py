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

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None, compile: bool = False):
        super().__init__(cfg, split)
        dev = cfg.device
        # one transfer, then a device-side rearrangement into planes (padded + mirrored for training)
        images = self.split.images.to(dev)
        self.source = prepare_source(images) if cfg.augment else images.permute(0, 3, 1, 2).contiguous()
        del images
        self.labels = self.split.labels.to(dev)
        self.norm = Normaliser(self.split.meta.stats, cfg.pca, dev)
        self.explicit = cfg.params
        # the plain batched path is the reference; torch.compile fuses it into one kernel where that pays
        self._augment = torch.compile(augment, dynamic=False) if compile else augment

    def _generator(self) -> torch.Generator:
        # one stream per (seed, epoch, rank): reproducible, and ranks draw differently
        g = torch.Generator(device=self.cfg.device)
        g.manual_seed(mix_seed(self.cfg.seed, self.epoch, self.cfg.rank))
        return g

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        c = self.cfg
        dev = c.device
        order = torch.as_tensor(self.order(), device=dev)
        gen = self._generator() if c.augment and self.explicit is None else None
        for start in range(0, len(self) * c.batch_size, c.batch_size):
            idx = order[start:start + c.batch_size]
            if not c.augment:
                p = None
            elif self.explicit is not None:
                p = BatchParams.from_numpy(self.explicit.take(idx.cpu().numpy()), dev)
            else:
                p = BatchParams.sample(len(idx), c.pca_sigma, gen, dev)
            x = self._augment(self.source, idx, p, self.norm, c.dtype, c.channels_last, c.jitter)
            yield self._emit(x, self.labels[idx], idx)
