"""Arithmetic: what a training step computes per image, and what the device can compute.

Images per second alone hides how far a step is from the chip's limit. The
ratio needs two numbers: the FLOPs of one training step per image, counted
once from the network itself (torch's FLOP counter over one forward and
backward on the meta device, so nothing is computed and any machine gives the
same count), and the device's matrix rate, measured rather than taken from a
data sheet (a large bf16 matrix product, timed on the device itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MATMUL_SIZE = 8192  # n of the n x n x n product: large enough to reach the tensor cores' steady rate


def training_flops_per_image(model: str = "alexnet_cifar", batch: int = 2) -> float:
    """FLOPs of one training step (forward, loss, backward) per image, as torch.utils.flop_counter counts them
    (matrix products and convolutions: 2 per multiply-add; elementwise work is not counted)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from alexpipe.model import build_model

    with torch.device("meta"):
        net = build_model(model)
        images = torch.empty(batch, 3, 32, 32)
        labels = torch.zeros(batch, dtype=torch.int64)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(images), labels).backward()
    return counter.get_total_flops() / batch


def matmul_tflops(device: "torch.device", n: int = MATMUL_SIZE, repeats: int = 20) -> float:
    """The device's measured bf16 matrix rate in TFLOP/s: an n x n by n x n product, timed over `repeats`
    back-to-back runs after a few untimed ones (library heuristics, clocks)."""
    import time

    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        torch.mm(a, b, out=c)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b, out=c)
    sync()
    seconds = time.perf_counter() - t0
    del a, b, c
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * n**3 * repeats / seconds / 1e12
