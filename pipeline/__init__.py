"""Bytes on disk -> augmented batch on the device.

`alexpipe convert` turns CIFAR-10 into one safetensors file per split;
`load_split` opens one without reading it; `make_loader` streams augmented
batches from it with one of four backends; `verify_dataset` checks a
converted folder against itself and its manifest.

The names below are imported on first use (PEP 562), so importing a light
sub-module such as `alexpipe.pipeline.cli` does not import torch.
"""

from __future__ import annotations

from alexpipe.lazy import lazy_exports

_EXPORTS = {
    "BACKENDS": ".loaders",
    "ChannelStats": ".format.stats",
    "DataError": ".errors",
    "Split": ".format.split",
    "SplitMeta": ".format.split",
    "load_split": ".format.split",
    "make_loader": ".loaders",
    "verify_dataset": ".format.integrity",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
