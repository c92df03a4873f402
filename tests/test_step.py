"""The hot loop, as far as a CPU can show it: the one step function, no host-device waits, resume layouts.

On CUDA, tests/test_cuda.py runs the same loop under torch's sync debug mode;
here a counting mode records everything that would make the host wait for a
GPU, over steady-state steps of every backend.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexpipe.model import build_model
from alexpipe.pipeline import make_loader
from alexpipe.train import checkpoint, distributed, loop
from alexpipe.train.hardware import resolve_amp
from alexpipe.train.recipes import get_recipe
from alexpipe.train.run import RunOptions, fit
from alexpipe.train.schedule import Schedule, build_optimizer
from alexpipe.train.step import build_step

from conftest import BACKENDS
from host_waits import Dispatches, HostWaits, SteadyState, aten, blocking_transfer

def _context(device, recipe, amp_dtype=None):
    torch.manual_seed(0)
    model = build_model(dropout=0.0)
    optimizer = build_optimizer(model, recipe)
    schedule = Schedule(optimizer, recipe, steps_per_epoch=8)
    step = build_step(model, optimizer, schedule, amp_dtype=amp_dtype, clip_grad_norm=recipe.clip_grad_norm)
    return model, loop.EpochContext(step, distributed.World(), device, log_every=10**9)


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_steady_state_steps_make_the_host_wait_for_nothing(real_data, backend):
    """8 steps of the real loop (clipping on, as in the blog recipe): between the first and the last, nothing
    reads a value back, builds a tensor from Python data or copies without non_blocking."""
    model, ctx = _context(torch.device("cpu"), get_recipe("blog"))
    loader = make_loader(real_data, "train", backend, batch_size=32, indices=np.arange(256), num_workers=1)
    counter = HostWaits()
    with counter:
        stats = loop.train_epoch(ctx, model, SteadyState(loader, counter), epoch=1)
    assert stats["train_images"] == 256
    assert counter.seen == [], counter.seen


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluation_reads_back_only_at_its_end(real_data):
    model, _ = _context(torch.device("cpu"), get_recipe("blog"))
    loader = make_loader(real_data, "val", "resident", batch_size=100, indices=np.arange(600))
    counter = HostWaits()
    with counter:
        res = loop.evaluate(model, SteadyState(loader, counter), None, True, 10)
    assert res["images"] == 600 and np.array(res["confusion"]).sum() == 600
    assert counter.seen == [], counter.seen


def test_the_counter_sees_what_it_must():
    """The counting test above is only as good as its counter: each kind of host wait is caught."""
    counter = HostWaits()
    x = torch.ones(4)
    with counter:
        counter.active = True
        x.sum().item()
        float(x.sum())
        x.tolist()
        x.nonzero()
        torch.bincount(x.long())
        x.to("cpu", non_blocking=True)  # allowed: no wait
        x.to(torch.float16)
        torch.from_numpy(np.zeros(3))
        torch.tensor(1.0)
    assert counter.seen == ["Tensor.item", "aten._local_scalar_dense.default", "aten._local_scalar_dense.default",
                            "Tensor.tolist", "aten.nonzero.default", "aten.bincount.default"], counter.seen
    from alexpipe.pipeline.loaders import base  # alexpipe's own code: a blocking .to(device) is seen

    with counter:
        counter.active = True
        exec(compile("x.to(torch.device('cpu'))\ntorch.tensor(2.0, device='cpu')", base.__file__, "exec"),
             {"x": x, "torch": torch})
    assert counter.seen[-2:] == ["Tensor.to", "torch.tensor"], counter.seen
    meta = torch.empty(3, device="meta")  # another device type, to check the transfer rule without a GPU
    assert blocking_transfer(aten._to_copy.default, (x,), {"device": torch.device("meta")})
    assert not blocking_transfer(aten._to_copy.default, (x,), {"device": "meta", "non_blocking": True})
    assert not blocking_transfer(aten._to_copy.default, (x,), {"dtype": torch.float16})
    assert blocking_transfer(aten.copy_.default, (meta, x[:3]), {})
    assert not blocking_transfer(aten.copy_.default, (meta, x[:3], True), {})


@pytest.mark.parametrize("split,batch_size", [("train", 50), ("val", 20)])
def test_the_resident_loader_dispatches_at_most_three_operations_per_batch(synthetic_data, split, batch_size):
    """A whole epoch (its parameter look-ups, augmentation and labels included) over its batches: the epoch is
    augmented in a few sets of kernels and a batch is a view of it; an evaluation split is made once."""
    loader = make_loader(synthetic_data, split, "resident", batch_size=batch_size, dtype=torch.bfloat16)
    loader.set_epoch(1)
    first = [x.clone() for x, _ in loader]
    counter = Dispatches()
    for epoch in (2, 3):
        loader.set_epoch(epoch)
        with counter:
            batches = sum(1 for _ in loader)
    assert batches == len(loader) > 3
    assert counter.count / (2 * batches) <= 3, counter.count
    if split == "val":  # made once, kept: the same values every epoch
        assert all(torch.equal(a, b) for a, (b, _) in zip(first, loader))


def test_an_epoch_is_fixed_by_its_number(small_data):
    """The same epoch twice gives the same batches (order, augmentation, labels); the next epoch another."""
    loader = make_loader(small_data, "train", "resident", batch_size=10)

    def visit(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader.set_epoch(epoch)
        batches = [(x.clone(), y.clone()) for x, y in loader]
        assert len(batches) == len(loader) == 25
        return batches

    first, again, second = visit(1), visit(1), visit(2)
    assert all(torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(first, again))
    assert not all(torch.equal(la, lb) for (_, la), (_, lb) in zip(first, second))


def test_amp_auto_uses_native_bf16_only(monkeypatch):
    """A T4 or V100 answers is_bf16_supported() with True through emulation: auto must pick fp16 there."""
    def pre_ampere(including_emulation: bool = True) -> bool:
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", pre_ampere)
    assert resolve_amp("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_amp("auto", torch.device("cuda")) == torch.bfloat16


def _trained_optimizer(channels_last: bool):
    """A model and a fused SGD that has taken two steps (momentum buffers exist), in one memory format."""
    torch.manual_seed(0)
    model = build_model(dropout=0.0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, get_recipe("blog"))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


@pytest.mark.slow
@pytest.mark.parametrize("saved_channels_last", [False, True])
def test_resume_into_another_memory_format_keeps_the_optimiser_exact(saved_channels_last, tmp_path):
    model, opt = _trained_optimizer(saved_channels_last)
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"epoch": 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "recipe": get_recipe("blog").to_dict(), "classes": []}, path)
    saved = checkpoint.load(path)

    def resumed(fused: bool):
        torch.manual_seed(1)
        m = build_model(dropout=0.0).to(memory_format=torch.contiguous_format if saved_channels_last
                                        else torch.channels_last)  # the other format
        m.load_state_dict(saved["model"])
        o = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=fused)
        if fused:
            checkpoint.restore_optimizer(o, saved["optimizer"])
        else:
            o.load_state_dict(saved["optimizer"])  # the per-tensor kernel reads any layout correctly, but the
            for g in o.param_groups:  # saved group would switch this optimiser to the fused one: switch it back
                g.update(fused=False, foreach=False)
        return m, o

    (m_fused, o_fused), (m_ref, o_ref) = resumed(True), resumed(False)
    assert o_fused.param_groups[0]["fused"] is True and o_ref.param_groups[0]["fused"] is False
    for p in m_fused.parameters():
        buf = o_fused.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride() and buf.device == p.device
    torch.manual_seed(2)
    grads = [torch.randn_like(p) for p in m_ref.parameters()]
    for m, o in ((m_fused, o_fused), (m_ref, o_ref)):
        for p, g in zip(m.parameters(), grads):
            p.grad = torch.empty_like(p).copy_(g)  # in the parameter's layout, as autograd makes gradients
        o.step()
    for a, b in zip(m_fused.parameters(), m_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_saved_param_groups_do_not_bring_back_their_implementation():
    model, opt = _trained_optimizer(False)
    state = opt.state_dict()
    state["param_groups"][0]["fused"] = True
    torch.manual_seed(0)
    other = torch.optim.SGD(build_model(dropout=0.0).parameters(), lr=0.01, momentum=0.9, foreach=True)
    checkpoint.restore_optimizer(other, state)
    g = other.param_groups[0]
    assert g["foreach"] is True and not g.get("fused") and g["lr"] == state["param_groups"][0]["lr"]


@pytest.mark.slow
def test_the_compiled_step_computes_what_the_eager_step_computes():
    """--compile compiles the forward + loss + sums and the clipping: same update, same sums, clipping engaged."""
    recipe = get_recipe("blog")
    x, y = torch.randn(16, 3, 8, 8) * 50, torch.randint(0, 10, (16,))  # large inputs: the clip engages

    def one_step(compile: bool):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
        opt = build_optimizer(net, recipe)
        step = build_step(net, opt, Schedule(opt, recipe, 1), amp_dtype=None, clip_grad_norm=0.5, compile=compile)
        sums = step(x, y)
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
        return sums, grad_norm, [p.detach().clone() for p in net.parameters()]

    (s_eager, g_eager, w_eager), (s_comp, g_comp, w_comp) = one_step(False), one_step(True)
    assert g_eager == pytest.approx(0.5, rel=1e-4) and g_comp == pytest.approx(0.5, rel=1e-4)
    torch.testing.assert_close(s_comp, s_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(w_comp, w_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_run_resumed_in_the_other_memory_format_continues_as_if_uninterrupted(small_data, tmp_path):
    """One epoch contiguous, then --resume with --channels-last: the same weights as two epochs channels_last
    (up to the float rounding of two layouts), not momentum buffers read in the wrong element order."""
    recipe = get_recipe("blog").replace(epochs=2, batch_size=64, lr=0.05, dropout=0.0)
    common = dict(data=small_data, amp="off", log_every=1)
    fit(RunOptions(out=tmp_path / "whole", recipe=recipe, channels_last=True, **common))
    cut = tmp_path / "cut"
    fit(RunOptions(out=cut, recipe=recipe.replace(epochs=1), channels_last=False, **common))
    fit(RunOptions(out=cut, recipe=recipe, channels_last=True, resume=True, **common))
    whole, resumed = (checkpoint.load(p / "last.pt")["model"] for p in (tmp_path / "whole", cut))
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=1e-4, atol=1e-5, msg=name)
