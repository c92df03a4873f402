"""Class-balanced choice of positions: the val split at conversion, `--subset` / `--eval-subset` in training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import numpy as np


def seed_problem(seed: int, below: Optional[int] = None) -> Optional[str]:
    """Why `seed` cannot seed alexpipe's draws, as the line a user reads (None: it can). `below`: the bound
    where numpy's legacy seeding (32 bits) is used, as training does."""
    if seed < 0:
        return f"--seed must be a non-negative integer, got {seed}"
    if below is not None and seed >= below:
        return f"--seed must be below 2**32 = {below:,} (numpy's seeds are 32-bit), got {seed}"
    return None


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
    import numpy as np  # here, not above: the command line imports this module for `seed_problem`

    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class + leave:
            raise ShortClass(c, len(idx))
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.empty(0, np.int64)
