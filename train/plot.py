"""The write-up's Figure 4: loss and accuracy curves, train vs val, per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from alexpipe.atomic import write_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Write the two-panel PNG atomically."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    has_val = all(h["val_acc"] is not None for h in history)  # a folder converted with --val-size 0 has none
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], "o-", ms=3, label="train")
    if has_val:
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", ms=3, label="val")
        ax_acc.plot(epochs, [100 * h["val_acc"] for h in history], "o-", ms=3, label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Lay out, save as PNG through `alexpipe.atomic` (never a half-written image), close the figure."""
    try:
        fig.tight_layout()
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
