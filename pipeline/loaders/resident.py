"""The resident loader: the whole uint8 split lives on the device, and an epoch is augmented all at once.

At the start of an epoch it looks up every image's window offset and colour
shift (a few kernels), then augments the epoch in one set of kernels on a GPU
(a few chunks of ~1,000 images on a CPU, where a chunk that stays in cache is
faster): batches are then views of that output, so a step costs the loader
nothing but handing over a view. No workers, no per-image Python, no
host-to-device copies after the first but one parameter table per epoch.
The evaluation splits, which are never augmented and visited in a fixed
order, are normalised once and kept. The technique of the fastest CIFAR-10
trainers.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from ..augment.batched import BatchParams, DeviceStats, Scratch, Windows, augment_chunk, normalise_chunk, pca_delta
from ..device import to_device
from ..format.split import Split
from .base import BaseLoader, Epoch, LoaderConfig

CPU_CHUNK_IMAGES = 1024  # measured on 2-core Xeons: chunks of 256-1,024 images run ~2x faster than 4,096 or more


class ResidentLoader(BaseLoader):
    """See the module docstring. Batches are read-only views of the epoch's output: a consumer that changes a
    batch in place would change what a later epoch of an evaluation split yields."""

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None):
        super().__init__(cfg, split)
        dev = cfg.device
        images = self.split.images.to(dev)  # one transfer, then a device-side rearrangement
        if cfg.augmented:
            self.windows: Optional[Windows] = Windows(images)
            self.planes = None
        else:
            self.windows, self.planes = None, images.permute(0, 3, 1, 2).contiguous()
        del images
        self.stats = DeviceStats(self.split.meta.stats, cfg.pca, dev)
        self._kept: Optional[list[torch.Tensor]] = None  # an evaluation split's batches, made once
        self._scratch: Optional[Scratch] = None

    def _chunk(self, n: int) -> int:
        """Images augmented per set of kernels: the whole epoch on a GPU, whole batches near CPU_CHUNK_IMAGES on a
        CPU."""
        if self.cfg.device.type != "cpu":
            return max(n, 1)
        b = self.cfg.batch_size
        return max(1, round(CPU_CHUNK_IMAGES / b)) * b

    def _images(self, epoch: Epoch) -> Iterator[torch.Tensor]:
        if self.cfg.augmented or self.cfg.shuffle:
            yield from self._augmented(epoch)
            return
        if self._kept is None:  # an evaluation split: the same batches every epoch, made once
            self._kept = list(self._augmented(epoch))
            self._scratch = None
        yield from self._kept

    def _augmented(self, epoch: Epoch) -> Iterator[torch.Tensor]:
        """The epoch's images a chunk at a time (steps 1-5, or 4-5 unaugmented), as views of each chunk."""
        c, b = self.cfg, epoch.batch_size
        order = to_device(torch.from_numpy(epoch.visited), c.device)
        n = order.shape[0]
        chunk = self._chunk(n)
        if self._scratch is None or self._scratch.pixels.shape[0] < min(chunk, n):
            self._scratch = Scratch(min(chunk, n), self.stats.scale.shape[0], c.device)
        if self.windows is not None:
            p = BatchParams.from_params(epoch.params, c.device)
            offsets = self.windows.offsets(order, p)
            delta = pca_delta(p.alpha[order], self.stats) if c.jitter else None
        for s in range(0, n, chunk):
            if self.windows is None:
                out = normalise_chunk(self.planes, order[s:s + chunk], self.stats, c.dtype, c.channels_last,
                                      self._scratch)
            else:
                out = augment_chunk(self.windows, offsets[s:s + chunk], None if delta is None else delta[s:s + chunk],
                                    self.stats, c.dtype, c.channels_last, self._scratch)
            yield from out.split(b)
