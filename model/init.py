"""Weight initialisation schemes.

"default": PyTorch's own (Kaiming-uniform), what the write-up used.
"kaiming": He et al. 2015 for ReLU networks: weights ~ N(0, 2 / fan_in) (the
output layer, which no ReLU follows, N(0, 1 / fan_in)), biases 0. PyTorch's
default shrinks the signal at every layer, so this 8-layer network with LRN
and dropout sits at chance for a few hundred steps before it starts to learn;
with "kaiming" it learns from the first steps.
"paper": Krizhevsky et al. 2012, section 5: weights ~ N(0, 0.01); biases 1 in
conv2, conv4, conv5 and the fully-connected hidden layers (so that ReLUs start
with positive inputs), 0 elsewhere, the output layer included (a constant
output bias would shift every logit equally and change nothing).
"""

from __future__ import annotations

from torch import nn

from . import INIT_SCHEMES

_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2", "fc3")
_PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "fc1", "fc2")


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Apply `scheme` in place to an AlexNet/AlexNetCIFAR (named conv1..5, fc1..3); returns it."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return model  # the layers were built with PyTorch's defaults
    if scheme == "kaiming":
        for name in _LAYERS:
            layer = getattr(model, name)
            gain = "linear" if name == "fc3" else "relu"
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=gain)
            nn.init.zeros_(layer.bias)
        return model
    for name in _LAYERS:
        layer = getattr(model, name)
        nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        nn.init.constant_(layer.bias, 1.0 if name in _PAPER_BIAS_ONE else 0.0)
    return model
