"""The networks, selectable by name. Nothing here knows about data or training."""

from __future__ import annotations

from torch import nn

from .alexnet import AlexNet, AlexNetCIFAR
from .init import INIT_SCHEMES, init_weights

MODELS = {"alexnet_cifar": AlexNetCIFAR, "alexnet": AlexNet}


def build_model(name: str = "alexnet_cifar", num_classes: int = 10, init: str = "default",
                dropout: float = 0.5) -> nn.Module:
    """A freshly initialised network. Seed torch's RNG first for reproducible weights."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return init_weights(MODELS[name](num_classes=num_classes, dropout=dropout), init)


__all__ = ["AlexNet", "AlexNetCIFAR", "INIT_SCHEMES", "MODELS", "build_model", "init_weights"]
