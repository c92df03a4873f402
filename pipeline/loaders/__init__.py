"""Four backends, one batch contract: see base.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import BACKENDS, BaseLoader, LoaderConfig, epoch_order


def make_loader(root: str | Path, split: str = "train", backend: str = "resident", *,
                device: str | torch.device = "cpu", **options: Any) -> BaseLoader:
    """A loader over `root/<split>` with the named backend.

    Options are the fields of `LoaderConfig` (batch_size, dtype, channels_last,
    pca, pca_sigma, augment, seed, shuffle, drop_last, rank, world_size,
    num_workers, indices, params, with_index) plus backend-specific ones
    (resident: compile, compile_mode; dali: use_plugin).
    """
    extra = {k: options.pop(k) for k in ("compile", "compile_mode", "use_plugin") if k in options}
    cfg = LoaderConfig(root=Path(root), split=split, device=torch.device(device), **options)
    if backend == "resident":
        from .resident import ResidentLoader

        return ResidentLoader(cfg, **extra)
    if backend == "torchvision":
        from .torchvision import TorchvisionLoader

        return TorchvisionLoader(cfg, **extra)
    if backend == "dali":
        from .dali import DaliLoader

        return DaliLoader(cfg, **extra)
    if backend == "ffcv":
        from .ffcv import FfcvLoader

        return FfcvLoader(cfg, **extra)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BaseLoader", "LoaderConfig", "epoch_order", "make_loader"]
