"""The networks, selectable by name. Nothing here knows about data or training.

The names are plain constants; the networks (and torch) are imported on first
use (PEP 562), so the command line can list the choices without loading torch.
"""

from __future__ import annotations

from alexpipe.lazy import lazy_exports

MODEL_NAMES = ("alexnet_cifar", "alexnet")  # build.MODELS maps each to its class
INIT_SCHEMES = ("default", "kaiming", "paper")  # init.py says what each is

_EXPORTS = {"AlexNet": ".alexnet", "AlexNetCIFAR": ".alexnet", "build_model": ".build", "init_weights": ".init"}

__all__ = ["INIT_SCHEMES", "MODEL_NAMES", *_EXPORTS]


__getattr__ = lazy_exports(__name__, _EXPORTS)
