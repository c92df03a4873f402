"""Accuracy counting, confusion matrices, the meters that sum them on the device, and the metrics file.

The meters never wait for the device while they add: sums stay device tensors,
counts stay Python ints, and `read` is the one place values come back to the
host (once per progress line, once per evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from alexpipe.atomic import write_text


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k (a device tensor: no sync)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == labels[:, None]
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks])


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted], by a scatter-add: unlike `bincount`, it never asks the device for a maximum."""
    flat = labels.to(torch.int64) * num_classes + preds.to(torch.int64)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat)).view(num_classes, num_classes)


class EpochMeter:
    """A training epoch's running loss and accuracy: `add` per step (asynchronous), `read` to show them."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x n, correct
        self.count = 0

    def add(self, sums: torch.Tensor, n: int) -> None:
        """`sums`: a batch's [loss x n, correct] (float64, on the device), as the training step returns it."""
        self.sums += sums
        self.count += n

    def read(self) -> tuple[float, float, int]:
        """(loss sum, correct, count): copies two numbers to the host."""
        loss_sum, correct = self.sums.tolist()
        return loss_sum, correct, self.count


class EvalMeter:
    """Summed loss, top-1, top-5 and the confusion matrix over an evaluation, kept on the device."""

    def __init__(self, num_classes: int, device: torch.device):
        self.num_classes = num_classes
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1, top-5
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.count = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        loss = F.cross_entropy(logits, labels, reduction="sum")
        self.sums += torch.cat((loss.double().view(1), topk_correct(logits, labels, (1, 5)).double()))
        self.confusion += confusion_matrix(logits.argmax(1), labels, self.num_classes)
        self.count += labels.shape[0]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Rewrite the whole file atomically (it is small): never a half-written line. A failure of the disk is
    `alexpipe.atomic.WriteError`, one line naming `path`."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def write_json(path: Path, obj: Any) -> None:
    """One JSON document, written atomically (temporary sibling, then rename)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")
