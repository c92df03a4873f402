"""The baseline: the ordinary torchvision way, as the write-up did it.

Per-sample PIL images through torchvision's transforms (pad 4, 32x32 crop,
horizontal flip, ToTensor, PCA jitter, Normalize), a DataLoader with worker
processes. Deliberately not optimised: every benchmark is a ratio against it.

The transforms are torchvision's functional ones (`TF.pad`, `TF.crop`,
`TF.hflip`): what `Pad(4)`, `RandomCrop(32)` and `RandomHorizontalFlip()` do
once they have drawn their parameters, here given by the epoch's table
(the loader's Epoch), which the sampler hands each worker with the
image's position. So an epoch's augmentation does not depend on which worker
served which image, and is the one every other backend applies. The PCA
jitter runs after ToTensor, on floats: jittering the PIL image would round
through uint8, which the augmentation's meaning forbids.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..augment import CROP, PAD, pca_matrix
from ..format.split import Split
from .base import BaseLoader, Epoch, LoaderConfig


class PCAJitter(torch.nn.Module):
    """Add M @ alpha to a CHW [0, 1] tensor, clamp to [0, 1] (M in 0..255 units, hence the / 255)."""

    def __init__(self, matrix: np.ndarray):
        super().__init__()
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32) / 255.0

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return (x + (self.matrix @ alpha)[:, None, None]).clamp_(0.0, 1.0)


class CifarImages(Dataset):
    """Items are `(position,)`, or `(position, dx, dy, flip, *alpha)` to augment; returns the CHW float32
    normalised image (labels come from the order)."""

    def __init__(self, split: Split, cfg: LoaderConfig):
        self.images = split.images.numpy()  # memory map, shared by forked workers
        stats = split.meta.stats
        self.normalize = T.Normalize([m / 255 for m in stats.mean], [s / 255 for s in stats.std])
        self.jitter = PCAJitter(pca_matrix(stats, cfg.pca)) if cfg.jitter else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple) -> torch.Tensor:
        pos, *params = item
        img = Image.fromarray(self.images[pos])
        if params:
            dx, dy, flip, *alpha = params
            img = TF.crop(TF.pad(img, PAD), dy, dx, CROP, CROP)  # what Pad(4) + RandomCrop(32) do at (dx, dy)
            if flip:
                img = TF.hflip(img)  # RandomHorizontalFlip's flip
        x = TF.to_tensor(img)
        if params and self.jitter is not None:
            x = self.jitter(x, torch.tensor(alpha, dtype=torch.float32))
        return self.normalize(x)


class _EpochSampler(Sampler):
    """Yields each image of the epoch being iterated, in order, with its parameters when augmenting."""

    def __init__(self) -> None:
        self.epoch: Optional[Epoch] = None  # set by the loader before each iteration

    def __len__(self) -> int:
        return len(self.epoch.order)

    def __iter__(self):
        order = self.epoch.order
        if self.epoch.params is None:
            return iter([(int(pos),) for pos in order])
        p = self.epoch.params.take(order)
        return iter(zip(order.tolist(), p.dx.tolist(), p.dy.tolist(), p.flip.tolist(), *p.alpha.T.tolist()))


class TorchvisionLoader(BaseLoader):
    """See the module docstring."""

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None):
        super().__init__(cfg, split)
        workers = max(0, cfg.num_workers)
        self.sampler = _EpochSampler()
        self.dl = DataLoader(
            CifarImages(self.split, cfg), batch_size=cfg.batch_size, sampler=self.sampler,
            drop_last=cfg.drop_last, num_workers=workers, pin_memory=cfg.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        )

    def _images(self, epoch: Epoch) -> Iterator[torch.Tensor]:
        # batches come in the sampler's order (the DataLoader keeps it, whatever worker made each), so batch k
        # holds the epoch's positions k * batch_size ...; on CUDA they arrive pinned: the copy does not block
        self.sampler.epoch = epoch
        for x in self.dl:
            yield x.to(self.cfg.device, non_blocking=True)
