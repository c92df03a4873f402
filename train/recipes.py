"""Training recipes: plain data classes whose defaults reproduce a paper.

`blog` is the write-up's recipe; `paper` the 2012 settings; `fast` ours.
Every field can be overridden from the command line (`alexpipe train --help`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Recipe:
    name: str = "blog"
    model: str = "alexnet_cifar"
    epochs: int = 49
    batch_size: int = 128  # global batch: per-rank batch x world size
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    # "step": lr x gamma after each epoch in step_epochs (1-based: 30 -> epochs 31+ run at lr/10)
    # "plateau": lr x gamma when val loss has not improved for `patience` epochs
    # "onecycle": linear warm-up over warmup_epochs to lr, then cosine to 0, per step
    schedule: str = "step"
    step_epochs: tuple[int, ...] = (30,)
    gamma: float = 0.1
    patience: int = 5
    warmup_epochs: float = 0.0
    clip_grad_norm: Optional[float] = 2.0
    init: str = "default"
    dropout: float = 0.5
    label_smoothing: float = 0.0
    pca: str = "blog"
    # "normalised": (x / 255 - mean) / std as the loaders make it; "pixels": x - mean on the 0..255 scale,
    # the paper's preprocessing, which its init is calibrated to (train/inputs.py)
    inputs: str = "normalised"
    pca_sigma: float = 0.1
    loader: str = "resident"
    tta_flip: bool = False  # evaluate on the image and its mirror, averaging logits
    seed: int = 0

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["step_epochs"] = list(self.step_epochs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe fields: {', '.join(sorted(unknown))}")
        d = dict(d)
        if "step_epochs" in d:
            d["step_epochs"] = tuple(d["step_epochs"])
        return cls(**d)


SCHEDULES = ("step", "plateau", "onecycle")
INPUTS = ("normalised", "pixels")  # what the network is fed: train/inputs.py

RECIPES: dict[str, Recipe] = {
    # the write-up: 49 epochs, batch 128, SGD(0.9), wd 5e-4, lr 0.01 -> 0.001 after epoch 30,
    # clip at max-norm 2, PyTorch default init, PCA jitter with s = sqrt(lambda)
    "blog": Recipe(),
    # Krizhevsky et al. 2012: N(0, 0.01) init with biases 1, lr / 10 when val loss plateaus,
    # no clipping, PCA jitter with the eigenvalue itself, mean-subtracted 0..255 pixels as inputs, 90 epochs
    "paper": Recipe(name="paper", epochs=90, schedule="plateau", clip_grad_norm=None, init="paper",
                    pca="paper", inputs="pixels"),
    # ours: same network; He init, bigger batch, warm-up + cosine (one cycle), label smoothing, Nesterov,
    # and flip test-time augmentation
    # (dropout 0.1: 15 epochs are too few to overfit; measured runs are listed in the README)
    "fast": Recipe(name="fast", epochs=15, batch_size=128, lr=0.08, nesterov=True, weight_decay=5e-4, init="kaiming",
                   schedule="onecycle", warmup_epochs=1.0, clip_grad_norm=None, dropout=0.1, label_smoothing=0.1,
                   tta_flip=True),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def validate(r: Recipe) -> None:
    """Raise ValueError with one clear sentence for an unusable combination."""
    from alexpipe.model import INIT_SCHEMES, MODEL_NAMES
    from alexpipe.pipeline.augment import PCA_VARIANTS
    from alexpipe.pipeline.loaders import BACKENDS

    checks = [
        (r.epochs >= 1, f"epochs must be at least 1, got {r.epochs}"),
        (r.batch_size >= 1, f"batch size must be positive, got {r.batch_size}"),
        (r.lr > 0, f"lr must be positive, got {r.lr}"),
        (r.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {r.schedule!r}"),
        (r.init in INIT_SCHEMES, f"init must be one of {', '.join(INIT_SCHEMES)}, got {r.init!r}"),
        (r.inputs in INPUTS, f"inputs must be one of {', '.join(INPUTS)}, got {r.inputs!r}"),
        (r.pca in PCA_VARIANTS, f"pca must be one of {', '.join(PCA_VARIANTS)}, got {r.pca!r}"),
        (r.loader in BACKENDS, f"loader must be one of {', '.join(BACKENDS)}, got {r.loader!r}"),
        (r.model in MODEL_NAMES, f"model must be one of {', '.join(MODEL_NAMES)}, got {r.model!r}"),
        (r.clip_grad_norm is None or r.clip_grad_norm > 0, "clip-grad-norm must be positive (or none)"),
        (0 <= r.label_smoothing < 1, "label smoothing must lie in [0, 1)"),
        (0 <= r.dropout < 1, "dropout must lie in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


__all__ = ["INPUTS", "RECIPES", "Recipe", "SCHEDULES", "get_recipe", "validate"]
