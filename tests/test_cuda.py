"""The CUDA paths: run where a GPU is (skipped here with that reason), on synthetic data only.

`make gpu-check` (bench/gpu_check.py) runs these first on a GPU machine. They
check what the CPU suite cannot: the resident loader on the device against
the NumPy reference, the step with fp16 + GradScaler, bf16, channels_last and
torch.compile (CUDA graphs included), a checkpoint crossing between CPU and
GPU, the hot loop under torch's sync debug mode, and NCCL with two GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexpipe.pipeline import load_split, make_loader
from alexpipe.pipeline.augment import AugParams, FixedParams
from alexpipe.train import checkpoint, distributed, loop
from alexpipe.train.run import RunOptions, fit
from alexpipe.train.recipes import get_recipe

from alexpipe.train.step import WARMUP_STEPS

from conftest import BACKENDS, assert_matches_reference, batches_with_positions, read_jsonl
from host_waits import HostWaits, SteadyState

pytestmark = [pytest.mark.cuda, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(lr=0.05, batch_size=64, epochs=2)


def run(data: Path, out: Path, **options) -> dict:
    recipe = get_recipe("blog").replace(**{**QUICK, **options.pop("recipe", {})})
    return fit(RunOptions(data=data, out=out, recipe=recipe, device="cuda", log_every=2, **options))


@pytest.mark.parametrize("variant", ["blog", "paper"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resident_loader_on_cuda_equals_the_reference(synthetic_data, variant, dtype):
    split = load_split(synthetic_data, "train")
    params = AugParams.random(len(split), 0.5, np.random.default_rng(4))  # sigma 0.5: the clamp matters
    loader = make_loader(synthetic_data, "train", "resident", device="cuda", batch_size=100, pca=variant,
                         param_source=FixedParams(params), dtype=dtype, channels_last=True)
    x, y = next(iter(loader))
    assert x.device.type == "cuda" and x.dtype == dtype and x.is_contiguous(memory_format=torch.channels_last)
    assert y.device.type == "cuda"
    exact = dtype == torch.float32
    for x, y, positions in batches_with_positions(loader):  # bf16 keeps 8 bits of mantissa
        assert_matches_reference(x, split, positions, params, variant, atol=1e-4 if exact else 2e-2,
                                 rtol=0 if exact else 1e-2)
        assert torch.equal(y, split.labels[positions])


@pytest.mark.parametrize("amp,compile_mode,graphs,kind", [
    ("fp16", None, None, "eager"), ("bf16", None, None, "captured"), ("off", None, None, "captured"),
    ("bf16", "default", None, "compiled+captured"), ("bf16", "max-autotune", None, "compiled+captured"),
    ("bf16", "reduce-overhead", False, "compiled")])
def test_short_cuda_runs_train_in_every_precision_and_compile_mode(small_data, tmp_path, amp, compile_mode, graphs,
                                                                   kind):
    out = tmp_path / "run"
    summary = run(small_data, out, amp=amp, channels_last=True, compile=compile_mode is not None,
                  compile_mode=compile_mode, cuda_graphs=graphs)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["device"].startswith("cuda") and cfg["amp"] == {"fp16": "float16", "bf16": "bfloat16", "off": "off"}[amp]
    assert cfg["channels_last"] is True and cfg["compile"] == (compile_mode is not None) and cfg["step"] == kind
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch"]
    assert len(epochs) == 2 and all(np.isfinite(e["train_loss"]) and np.isfinite(e["val_loss"]) for e in epochs)
    assert summary["test_images"] == 60
    ckpt = checkpoint.load(out / "last.pt")
    assert (ckpt["scaler"] is not None) == (amp == "fp16")  # the gradient scaler exists for fp16 only


@pytest.mark.parametrize("first,second", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_resumes_on_the_other_device(small_data, tmp_path, first, second):
    """CPU runs contiguous, CUDA channels_last: the optimiser's buffers must follow their parameters."""
    out = tmp_path / "run"
    recipe = get_recipe("blog").replace(**QUICK)
    common = dict(data=small_data, out=out, amp="off", log_every=2)
    fit(RunOptions(recipe=recipe.replace(epochs=1), device=first, **common))
    summary = fit(RunOptions(recipe=recipe.replace(epochs=2), device=second, resume=True, **common))
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt["epoch"] == 2 and np.isfinite(summary["test_loss"])
    assert all(torch.isfinite(s["momentum_buffer"]).all() for s in ckpt["optimizer"]["state"].values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_steady_state_cuda_steps_never_synchronise(synthetic_data, backend):
    """torch's sync debug mode raises on any synchronising CUDA call inside the steady-state window."""
    device = torch.device("cuda")
    recipe = get_recipe("blog")
    torch.manual_seed(0)
    from alexpipe.model import build_model
    from alexpipe.train.schedule import Schedule, build_optimizer
    from alexpipe.train.step import build_step

    model = build_model(dropout=0.0).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe)
    step = build_step(model, optimizer, Schedule(optimizer, recipe, 8), amp_dtype=torch.bfloat16,
                      clip_grad_norm=recipe.clip_grad_norm)
    ctx = loop.EpochContext(step, distributed.World(), device, log_every=10**9)
    loader = make_loader(synthetic_data, "train", backend, device=device, batch_size=64, dtype=torch.bfloat16,
                         channels_last=True, indices=np.arange(640), num_workers=2)
    counter = HostWaits()
    assert step.kind == "captured"
    with counter:  # counted from the first replay of the captured step
        loop.train_epoch(ctx, model, SteadyState(loader, counter, cuda_errors=True, start=WARMUP_STEPS + 1),
                         epoch=1)
    assert counter.seen == [], counter.seen


@pytest.mark.parametrize("compile", [False, True])
def test_the_captured_step_computes_what_the_uncaptured_step_computes(compile):
    """Eight steps of the one-cycle schedule (the lr changes every step, written into the captured graph's
    device tensor) with clipping engaged: the same sums and the same weights, captured or not."""
    from alexpipe.model import build_model
    from alexpipe.train.schedule import Schedule, build_optimizer
    from alexpipe.train.step import build_step

    recipe = get_recipe("fast").replace(clip_grad_norm=0.5)
    torch.manual_seed(1)
    batches = [(torch.randn(32, 3, 32, 32, device="cuda") * 3, torch.randint(0, 10, (32,), device="cuda"))
               for _ in range(8)]

    def train(capture: bool):
        torch.manual_seed(0)
        model = build_model(dropout=0.0).cuda()
        optimizer = build_optimizer(model, recipe)
        step = build_step(model, optimizer, Schedule(optimizer, recipe, 4), amp_dtype=None,
                          clip_grad_norm=recipe.clip_grad_norm, compile=compile, capture=capture)
        sums = [step(x, y).clone() for x, y in batches]
        return step, torch.stack(sums), [p.detach().clone() for p in model.parameters()]

    (plain, s_plain, w_plain), (captured, s_cap, w_cap) = train(False), train(True)
    assert captured.kind.endswith("captured") and not plain.kind.endswith("captured")
    torch.testing.assert_close(s_cap, s_plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(w_cap, w_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert captured.schedule.lr == pytest.approx(plain.schedule.lr)


def test_two_gpus_over_nccl_stay_in_sync(small_data, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "alexpipe",
           "train", "--data", str(small_data), "--out", str(tmp_path / "ddp"), "--epochs", "1", "--batch-size", "64",
           "--lr", "0.05", "--device", "cuda"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["rank_weight_digests"])) == 1
    assert summary["test_images"] == 60
