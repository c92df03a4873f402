"""What the network is fed: the normalised batch, or the paper's mean-subtracted pixels.

Every loader produces (x / 255 - mean) / std, the one meaning of the
augmentation. The 2012 paper fed its network raw 0..255 pixels minus the mean
(std about 60), and its N(0, 0.01) init with biases of 1 is calibrated to that
scale: on unit-scale inputs conv1's output is so small beside conv2's bias of 1
that the images differ by a few thousandths of an activation and the network
sits at chance (measured: the paper recipe on normalised inputs stayed at 10%
for 4 epochs, in float32 as in bf16). Multiplying the normalised batch by std
(0..255 units) per channel gives back exactly x - mean, so the paper's inputs
come from the same loaders with one multiply on the device.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .recipes import INPUTS



class MeanSubtractedPixels(nn.Module):
    """`net` fed x * std: normalised images back on the 0..255 scale, minus the mean."""

    def __init__(self, net: nn.Module, std: Sequence[float]):
        super().__init__()
        self.net = net
        # not persistent: checkpoints hold the bare network's weights whatever it was fed
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.std.to(x.dtype))


def feed(model: nn.Module, inputs: str, std: Sequence[float]) -> nn.Module:
    """`model` as the recipe's `inputs` want it fed; the same module when they are the loaders' own."""
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    if inputs == "normalised":
        return model
    return MeanSubtractedPixels(model, std).to(next(model.parameters()).device)


__all__ = ["MeanSubtractedPixels", "feed"]
