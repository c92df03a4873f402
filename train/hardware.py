"""Which device, autocast dtype and compiler mode a run uses: the choices, and how "auto" resolves them.

Light to import (torch only inside the functions): the command line lists these choices in --help.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def resolve_device(name: str, local_rank: int = 0) -> "torch.device":
    """auto: the GPU of this process (`local_rank`) when CUDA is there, else the CPU. ValueError, one line,
    for an unknown name or a GPU that is not there."""
    import torch

    if name not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def resolve_amp(amp: str, device: "torch.device") -> "Optional[torch.dtype]":
    """The autocast dtype (None: float32 throughout).

    auto: bf16 where the hardware does it natively (Ampere and newer GPUs,
    CPUs with AVX512-BF16 or AMX); on other GPUs fp16, with a gradient scaler,
    since a T4 or a V100 only emulates bf16 (torch.cuda.is_bf16_supported()
    says True there unless asked about native support); float32 on other CPUs,
    where emulated bf16 is many times slower than float32.
    """
    import torch

    if amp not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp != "auto":
        return {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def prepare_device(device: "torch.device") -> None:
    """What a CUDA device is set to before training (or timing training): this process's device; cuDNN
    choosing its algorithms by measuring them (every training batch has one shape); TF32 for float32 matrix
    products. Nothing on a CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True


def use_compile_cache() -> None:
    """Keep torch.compile's caches in alexpipe's cache folder (unless the user chose another): the next run with
    the same shapes then loads its kernels instead of compiling them again (a warm start)."""
    import os

    from alexpipe.pipeline.cache import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def compile_seconds() -> float:
    """Seconds this process has spent in torch.compile so far (tracing and code generation, forward and
    backward); 0 where torch does not say."""
    import sys

    dynamo = sys.modules.get("torch._dynamo.utils")
    if dynamo is None:  # nothing was compiled: torch.compile imports it
        return 0.0
    try:
        return float(dynamo.calculate_time_spent().get("total_wall_time", 0.0))
    except Exception:  # noqa: BLE001 - a private counter of torch's: its absence costs a figure, not the run
        return 0.0


def amp_note(amp_dtype: "Optional[torch.dtype]", device: "torch.device") -> Optional[str]:
    """A line to print before a run that will be slow for a reason the user may not know, or None.

    fp16 autocast on a CPU runs, but its convolutions are many times slower
    than bf16 or float32 there (measured: about 40x for this network's step on
    the development CPU), so a run asked for it would look hung.
    """
    import torch

    if device.type == "cpu" and amp_dtype == torch.float16:
        return ("--amp fp16 on a CPU is many times slower than --amp bf16 or off (about 40x measured for this "
                "network): CPUs are not fast at float16")
    return None
