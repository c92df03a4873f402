"""The networks. They know nothing of data or training: tensors in, logits out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LocalResponseNorm(nn.LocalResponseNorm):
    """nn.LocalResponseNorm's function, computed as a sum of shifted squares in float32.

    torch's version goes through a 3-D average pool, which on the CPU costs half
    again as much (forward + backward); the result is the same to float
    rounding (tested). Float32 inside keeps the sum of squares exact under
    bf16 autocast, as torch's own LRN does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        c = xf.shape[1]
        padded = F.pad(xf * xf, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        window = padded[:, 0:c]
        for i in range(1, self.size):
            window = window + padded[:, i:i + c]
        return xf * (self.k + (self.alpha / self.size) * window).pow(-self.beta)


class _AlexNetBase(nn.Module):
    """What both networks share: conv1..conv5 in `features`, then dropout-FC-ReLU twice and the output FC."""

    def _make_classifier(self, in_features: int, num_classes: int, dropout: float) -> None:
        self.fc1 = nn.Linear(in_features, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, num_classes)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), self.fc1, nn.ReLU(inplace=True),
            nn.Dropout(dropout), self.fc2, nn.ReLU(inplace=True),
            self.fc3,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNetCIFAR(_AlexNetBase):
    """The write-up's CIFAR-10 AlexNet (32x32 input, 23,272,266 parameters).

    Smaller first kernel and stride than the paper's, non-overlapping 2x2
    pooling and padding chosen so that 32 -> 17 -> 8 -> 10 -> 5 -> 5 -> 2:
    the 256 x 2 x 2 = 1024 features feed the 4096-4096 classifier.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=2)
        self.conv2 = nn.Conv2d(64, 192, kernel_size=3, padding=2)
        self.conv3 = nn.Conv2d(192, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.features = nn.Sequential(
            self.conv1, nn.ReLU(inplace=True), LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(2, 2),
            self.conv2, nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            self.conv3, nn.ReLU(inplace=True),
            self.conv4, nn.ReLU(inplace=True),
            self.conv5, nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        self._make_classifier(256 * 2 * 2, num_classes, dropout)


class AlexNet(_AlexNetBase):
    """The 2012 ImageNet AlexNet (224x224 input), as one tower instead of two GPUs' halves.

    96/256/384/384/256 channels, 11x11 stride-4 first conv, LRN after conv1 and
    conv2, overlapping 3x3/2 max-pooling, FC 4096-4096-classes with dropout on
    the first two FC layers.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(96, 256, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(256, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(384, 256, kernel_size=3, padding=1)
        lrn = lambda: LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)  # noqa: E731
        self.features = nn.Sequential(
            self.conv1, nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
            self.conv2, nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
            self.conv3, nn.ReLU(inplace=True),
            self.conv4, nn.ReLU(inplace=True),
            self.conv5, nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self._make_classifier(256 * 6 * 6, num_classes, dropout)
