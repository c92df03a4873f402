"""A network by name, freshly initialised."""

from __future__ import annotations

from torch import nn

from . import MODEL_NAMES
from .alexnet import AlexNet, AlexNetCIFAR
from .init import init_weights

MODELS = dict(zip(MODEL_NAMES, (AlexNetCIFAR, AlexNet)))


def build_model(name: str = "alexnet_cifar", num_classes: int = 10, init: str = "default",
                dropout: float = 0.5) -> nn.Module:
    """A freshly initialised network. Seed torch's RNG first for reproducible weights."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return init_weights(MODELS[name](num_classes=num_classes, dropout=dropout), init)
