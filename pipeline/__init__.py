"""Bytes on disk -> augmented batch on the device.

`alexpipe convert` turns CIFAR-10 into one safetensors file per split;
`load_split` opens one without reading it; `make_loader` streams augmented
batches from it with one of four backends.
"""

from .errors import DataError
from .fileformat import Split, SplitMeta, load_split
from .loaders import BACKENDS, make_loader
from .stats import ChannelStats

__all__ = ["BACKENDS", "ChannelStats", "DataError", "Split", "SplitMeta", "load_split", "make_loader"]
