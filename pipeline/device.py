"""Host-to-device copies that never make the host wait."""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: through pinned memory, asynchronously, on CUDA.

    The pinned copy is freed only once the transfer is done (torch's caching
    host allocator records the stream), so the caller may drop it at once.
    """
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
