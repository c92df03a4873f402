"""Training recipes: plain data classes whose defaults reproduce a paper.

`blog` is the write-up's recipe; `paper` the 2012 settings; `fast` ours.
Every field can be overridden from the command line (`alexpipe train --help`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from alexpipe.model import INIT_SCHEMES
from alexpipe.pipeline.augment import PCA_VARIANTS
from alexpipe.pipeline.loaders import BACKENDS


SCHEDULES = ("step", "plateau", "onecycle")
# The networks a run trains: those made for CIFAR-10's 32x32 images. model/ also keeps the 2012 ImageNet
# AlexNet for completeness, but its strided 11x11 convolution and three poolings shrink a 32x32 image to
# nothing before its last pooling (it needs 224x224 inputs), so it is not offered here.
MODELS = ("alexnet_cifar",)
INPUTS = ("normalised", "pixels")  # what the network is fed: train/inputs.py


def _option(default: Any, help: str, choices: Optional[tuple[str, ...]] = None, checked: bool = True) -> Any:
    """A recipe field that is also an option of `alexpipe train` (train/cli.py makes the option from it):
    its default, its help, and its choices (`checked=False`: shown in --help, refused by `validate`)."""
    return field(default=default, metadata={"help": help, "choices": choices, "checked": checked})


@dataclass(frozen=True)
class Recipe:
    """Everything that changes a run's maths. Each field but `name` is an option of `alexpipe train` that
    overrides the named recipe's value: adding a field here adds the option."""

    name: str = "blog"  # which named recipe this is (or was made from): `--recipe` chooses it
    model: str = _option("alexnet_cifar", "Network.", MODELS, checked=False)
    epochs: int = _option(49, "Epochs to train (blog 49, paper 90).")
    batch_size: int = _option(128, "Global batch size (per process x processes).")
    lr: float = _option(0.01, "Peak learning rate.")
    momentum: float = _option(0.9, "SGD momentum.")
    nesterov: bool = _option(False, "")
    weight_decay: float = _option(5e-4, "L2 weight decay.")
    # "step": lr x gamma after each epoch in step_epochs (1-based: 30 -> epochs 31+ run at lr/10)
    # "plateau": lr x gamma when val loss has not improved for `patience` epochs
    # "onecycle": linear warm-up over warmup_epochs to lr, then cosine to 0, per step
    schedule: str = _option("step", "", SCHEDULES)
    step_epochs: tuple[int, ...] = _option((30,), "For 'step': comma-separated epochs after which lr is multiplied "
                                                  "by gamma.")
    gamma: float = _option(0.1, "lr factor of 'step' and 'plateau'.")
    patience: int = _option(5, "Epochs without val-loss improvement before 'plateau' cuts lr.")
    warmup_epochs: float = _option(0.0, "Linear warm-up of 'onecycle', in epochs.")
    clip_grad_norm: Optional[float] = _option(2.0, "Gradient max-norm; 0 = off.")
    init: str = _option("default", "Weight init.", INIT_SCHEMES)
    dropout: float = _option(0.5, "Dropout of the FC layers.")
    label_smoothing: float = _option(0.0, "Label smoothing of the loss.")
    pca: str = _option("blog", "PCA colour jitter.", PCA_VARIANTS)
    # "normalised": (x / 255 - mean) / std as the loaders make it; "pixels": x - mean on the 0..255 scale,
    # the paper's preprocessing, which its init is calibrated to (train/inputs.py)
    inputs: str = _option("normalised", "What the network is fed: normalised (x / 255 - mean) / std, or pixels "
                                        "(x - mean on the 0..255 scale, the paper's).", INPUTS)
    pca_sigma: float = _option(0.1, "Std of the PCA coefficients alpha.")
    loader: str = _option("resident", "Input pipeline.", BACKENDS)
    tta_flip: bool = _option(False, "Evaluate on image + mirror.")  # averaging the two logits
    seed: int = _option(0, "Seeds weights, shuffles and augmentation.")

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["step_epochs"] = list(self.step_epochs)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Recipe":
        """A recipe from its `to_dict` form (config.json, a checkpoint): ValueError naming the first field that is
        unknown or of the wrong type, since these files may have been edited by hand."""
        if not isinstance(d, dict):
            raise ValueError(f"a recipe must be a JSON object, got {type(d).__name__}")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown recipe fields: {', '.join(sorted(unknown))}")
        return cls(**{k: _typed(k, v, fields[k]) for k, v in d.items()})


def _typed(name: str, value: Any, default: Any) -> Any:
    """`value` as the type of the field's default (ints are floats where a float is due); ValueError if not."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "clip_grad_norm":
        ok, value = value is None or number, None if value is None else value
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = number and float(value).is_integer()
        value = int(value) if ok else value
    elif isinstance(default, float):
        ok = number
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"recipe field {name!r} has the wrong type: {value!r}")
    return float(value) if isinstance(default, float) and name != "clip_grad_norm" else value



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


def check_model(name: str) -> None:
    """ValueError, one line naming --model, for a network this data cannot feed."""
    from alexpipe.model import MODEL_NAMES

    if name in MODEL_NAMES and name not in MODELS:
        raise ValueError(f"--model {name} is the 2012 ImageNet network: it needs 224x224 inputs and CIFAR-10's "
                         f"images are 32x32 (use --model {MODELS[0]}, its CIFAR-10 adaptation)")
    if name not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {name!r}")


def validate(r: Recipe) -> None:
    """Raise ValueError with one clear sentence, naming the option, for an unusable recipe."""
    from alexpipe.pipeline.sampling import seed_problem

    def one_of(flag: str, value: str, choices) -> tuple[bool, str]:
        return value in choices, f"--{flag} must be one of {', '.join(choices)}, got {value!r}"

    for f in dataclasses.fields(r):  # nan passes every comparison below as False, inf most as True
        value = getattr(r, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
    check_model(r.model)
    checks = [
        (r.epochs >= 1, f"--epochs must be at least 1, got {r.epochs}"),
        (r.batch_size >= 1, f"--batch-size must be positive, got {r.batch_size}"),
        (r.lr > 0, f"--lr must be positive, got {r.lr}"),
        (0 <= r.momentum < 1, f"--momentum must lie in [0, 1), got {r.momentum}"),
        (r.weight_decay >= 0, f"--weight-decay must not be negative, got {r.weight_decay}"),
        one_of("schedule", r.schedule, SCHEDULES), one_of("init", r.init, INIT_SCHEMES),
        one_of("inputs", r.inputs, INPUTS), one_of("pca", r.pca, PCA_VARIANTS), one_of("loader", r.loader, BACKENDS),
        (all(e >= 1 for e in r.step_epochs), f"--step-epochs must be epoch numbers from 1, got {r.step_epochs}"),
        (r.gamma > 0, f"--gamma must be positive, got {r.gamma}"),
        (r.patience >= 0, f"--patience must not be negative, got {r.patience}"),
        (r.warmup_epochs >= 0, f"--warmup-epochs must not be negative, got {r.warmup_epochs}"),
        (r.clip_grad_norm is None or r.clip_grad_norm > 0, "--clip-grad-norm must be positive (or 0: off)"),
        (0 <= r.label_smoothing < 1, f"--label-smoothing must lie in [0, 1), got {r.label_smoothing}"),
        (0 <= r.dropout < 1, f"--dropout must lie in [0, 1), got {r.dropout}"),
        (r.pca_sigma >= 0, f"--pca-sigma must not be negative, got {r.pca_sigma}"),
        (seed_problem(r.seed, below=2 ** 32) is None, seed_problem(r.seed, below=2 ** 32)),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


__all__ = ["INPUTS", "MODELS", "RECIPES", "Recipe", "SCHEDULES", "check_model", "get_recipe", "validate"]
