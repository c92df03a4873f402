"""The networks. They know nothing of data or training: tensors in, logits out."""

from __future__ import annotations

import torch
from torch import nn


class AlexNetCIFAR(nn.Module):
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
            self.conv1, nn.ReLU(inplace=True), nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(2, 2),
            self.conv2, nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            self.conv3, nn.ReLU(inplace=True),
            self.conv4, nn.ReLU(inplace=True),
            self.conv5, nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        self.fc1 = nn.Linear(256 * 2 * 2, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, num_classes)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), self.fc1, nn.ReLU(inplace=True),
            nn.Dropout(dropout), self.fc2, nn.ReLU(inplace=True),
            self.fc3,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNet(nn.Module):
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
        lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)  # noqa: E731
        self.features = nn.Sequential(
            self.conv1, nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
            self.conv2, nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
            self.conv3, nn.ReLU(inplace=True),
            self.conv4, nn.ReLU(inplace=True),
            self.conv5, nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.fc1 = nn.Linear(256 * 6 * 6, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, num_classes)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), self.fc1, nn.ReLU(inplace=True),
            nn.Dropout(dropout), self.fc2, nn.ReLU(inplace=True),
            self.fc3,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
