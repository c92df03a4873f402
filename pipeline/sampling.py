"""Class-balanced choice of positions: the val split at conversion, `--subset` / `--eval-subset` in training."""

from __future__ import annotations

import numpy as np


class ShortClass(ValueError):
    """A class has too few images for the balanced choice; the caller words the message."""

    def __init__(self, label: int, available: int):
        super().__init__(f"class {label} has only {available} images")
        self.label, self.available = label, available


def balanced_choice(labels: np.ndarray, per_class: int, rng: np.random.Generator, num_classes: int,
                    leave: int = 0) -> np.ndarray:
    """`per_class` positions of each class, drawn by `rng` without replacement, ascending (int64).

    ShortClass when a class has fewer than `per_class + leave` images (`leave`:
    how many must remain unchosen).
    """
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class + leave:
            raise ShortClass(c, len(idx))
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.empty(0, np.int64)
