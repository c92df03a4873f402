"""The baseline: the ordinary torchvision way, as the write-up did it.

Per-sample PIL images, torchvision transforms (Pad(4), RandomCrop(32),
RandomHorizontalFlip, PCA jitter, Normalize), a DataLoader with worker
processes. Deliberately not optimised: every benchmark is a ratio against it.

The PCA jitter runs after ToTensor, on floats: jittering the PIL image would
round through uint8, which the augmentation's meaning forbids.

Reproducibility: the sampler hands each worker `(position, epoch)`, and the
worker seeds torch's RNG from (seed, epoch, position) before transforming that
image, so an epoch's augmentation does not depend on which worker served it.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..augment import PAD, AugParams, pca_matrix
from ..fileformat import Split
from .base import BaseLoader, LoaderConfig, mix_seed


class PCAJitter(torch.nn.Module):
    """Add M @ alpha (alpha ~ N(0, sigma^2)) to a CHW [0, 1] tensor, clamp to [0, 1]."""

    def __init__(self, matrix: np.ndarray, sigma: float):
        super().__init__()
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32) / 255.0
        self.sigma = sigma

    def forward(self, x: torch.Tensor, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        if alpha is None:
            alpha = torch.randn(3) * self.sigma
        return (x + (self.matrix @ alpha)[:, None, None]).clamp_(0.0, 1.0)


class CifarImages(Dataset):
    """Items are `(position, epoch)`; returns the CHW float32 normalised image (labels come from the order)."""

    def __init__(self, split: Split, cfg: LoaderConfig):
        self.images = split.images.numpy()  # memory map, shared by forked workers
        stats = split.meta.stats
        self.normalize = T.Normalize([m / 255 for m in stats.mean], [s / 255 for s in stats.std])
        self.jitter = PCAJitter(pca_matrix(stats, cfg.pca), cfg.pca_sigma) if cfg.jitter else None
        self.pad_crop_flip = T.Compose([T.Pad(PAD), T.RandomCrop(32), T.RandomHorizontalFlip()])
        self.augment, self.seed, self.params = cfg.augment, cfg.seed, cfg.params

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]):
        pos, epoch = item
        img = Image.fromarray(self.images[pos])
        if self.augment:
            torch.manual_seed(mix_seed(self.seed, epoch, pos))
            if self.params is None:
                x = TF.to_tensor(self.pad_crop_flip(img))
                x = self.jitter(x) if self.jitter is not None else x
            else:  # test hook: the same torchvision functions, given parameters
                x = self._explicit(img, self.params.take(np.array([pos])))
        else:
            x = TF.to_tensor(img)
        return self.normalize(x)

    def _explicit(self, img: Image.Image, p: AugParams) -> torch.Tensor:
        img = TF.crop(TF.pad(img, PAD), int(p.dy[0]), int(p.dx[0]), 32, 32)
        if p.flip[0]:
            img = TF.hflip(img)
        x = TF.to_tensor(img)
        return self.jitter(x, torch.as_tensor(p.alpha[0])) if self.jitter is not None else x


class _EpochSampler(Sampler):
    """Yields (position, epoch) in the loader's order for its current epoch."""

    def __init__(self, loader: "TorchvisionLoader"):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.order())

    def __iter__(self):
        epoch = self.loader.epoch
        return iter([(int(p), epoch) for p in self.loader.order()])


class TorchvisionLoader(BaseLoader):
    backend = "torchvision"

    def __init__(self, cfg: LoaderConfig, split: Optional[Split] = None):
        super().__init__(cfg, split)
        workers = max(0, cfg.num_workers)
        self.dl = DataLoader(
            CifarImages(self.split, cfg), batch_size=cfg.batch_size, sampler=_EpochSampler(self),
            drop_last=cfg.drop_last, num_workers=workers, pin_memory=cfg.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        )

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        c = self.cfg
        # batches come in the sampler's order (the DataLoader keeps it, whatever worker made each), so batch k
        # holds this epoch's positions k * batch_size ...; on CUDA they arrive pinned: the copy does not block
        for k, x in enumerate(self.dl):
            x = x.to(c.device, non_blocking=True).to(c.dtype)
            x = x.contiguous(memory_format=torch.channels_last) if c.channels_last else x
            yield self._emit(x, k)
