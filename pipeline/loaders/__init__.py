"""Four backends, one batch contract (base.py), one door: `make_loader`.

Importing this package is light (the backend names; torch comes with the
first loader), so the command line can list the backends quickly.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from alexpipe.lazy import lazy_exports

BACKENDS = ("resident", "dali", "ffcv", "torchvision")

# backend name -> (module, class); each module is imported only when its backend is asked for
_CLASSES = {"resident": (".resident", "ResidentLoader"), "dali": (".dali.loader", "DaliLoader"),
            "ffcv": (".ffcv.loader", "FfcvLoader"), "torchvision": (".torchvision", "TorchvisionLoader")}


def make_loader(root: str | Path, split: str = "train", backend: str = "resident", *,
                device: "str | torch.device" = "cpu", **options: Any) -> "BaseLoader":
    """A loader over `root/<split>` with the named backend.

    Options are the fields of `LoaderConfig` (batch_size, dtype, channels_last,
    pca, pca_sigma, augmented, seed, shuffle, drop_last, rank, world_size,
    num_workers, indices, param_source) plus the backend's own: dali
    `use_plugin`, `plugin_path`; ffcv `jitter_on`. An option the backend
    does not take is a ValueError.
    """
    import torch

    from .base import LoaderConfig

    if backend not in _CLASSES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    fields = {f.name for f in dataclasses.fields(LoaderConfig)}
    config = {k: v for k, v in options.items() if k in fields}
    extra = {k: v for k, v in options.items() if k not in fields}
    module, name = _CLASSES[backend]
    cls = getattr(importlib.import_module(module, __name__), name)
    takes = cls.OPTIONS
    unknown = sorted(set(extra) - set(takes))
    if unknown:
        raise ValueError(f"the {backend} backend takes no option {', '.join(unknown)}"
                         + (f" (its own: {', '.join(sorted(takes))})" if takes else ""))
    return cls(LoaderConfig(root=Path(root), split=split, device=torch.device(device), **config), **extra)


__getattr__ = lazy_exports(__name__, {"BaseLoader": ".base", "LoaderConfig": ".base", "epoch_order": ".base"})


__all__ = ["BACKENDS", "BaseLoader", "LoaderConfig", "epoch_order", "make_loader"]
