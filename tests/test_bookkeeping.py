"""An epoch's end costs the epoch next to nothing: snapshots on the device, files in the background, records of
where the time went. (The CUDA side of the same, and the captured step, are in test_cuda.py.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from alexpipe.model import build_model
from alexpipe.train import checkpoint, run as run_module
from alexpipe.train.bookkeeping import Snapshot, WriteFailed, Writer
from alexpipe.train.loop import evaluate
from alexpipe.train.recipes import get_recipe
from alexpipe.train.run import RunOptions, fit
from alexpipe.pipeline import make_loader

from conftest import read_jsonl

QUICK = dict(lr=0.05, batch_size=50, dropout=0.0)


def test_a_snapshot_is_a_copy_that_keeps_shared_tensors_shared():
    model = build_model()
    snap = Snapshot()
    snap.take({"model": model.state_dict(), "step": 3, "groups": [{"lr": 0.1}]}, epoch=1)
    before = model.conv1.weight.detach().clone()
    with torch.no_grad():
        model.conv1.weight.add_(1.0)  # training goes on after the snapshot
    state = snap.host()
    assert torch.equal(state["model"]["conv1.weight"], before) and state["step"] == 3 and snap.meta == {"epoch": 1}
    # conv1 is also features.0 (one module, two names): one tensor, as torch.save would store it
    assert state["model"]["conv1.weight"].data_ptr() == state["model"]["features.0.weight"].data_ptr()
    tensors = {t.data_ptr(): t.numel() for t in state["model"].values()}
    assert sum(tensors.values()) == sum(p.numel() for p in model.parameters())  # not twice the network


def test_the_writer_runs_jobs_in_order_and_reports_a_failure_on_the_main_thread():
    writer, done = Writer(), []
    writer.submit(lambda: (time.sleep(0.05), done.append(1)))
    writer.submit(lambda: done.append(2))
    writer.drain()
    assert done == [1, 2]
    writer.submit(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device", "x/last.pt")))
    writer.submit(lambda: done.append(3))  # after a failure, nothing more is written
    with pytest.raises(WriteFailed, match="No space left"):
        writer.drain()
    assert done == [1, 2]
    writer.close()


def test_a_snapshot_is_not_overwritten_before_the_writer_has_copied_it():
    writer, seen, gate = Writer(), [], threading.Event()
    snap = Snapshot()
    snap.take({"w": torch.zeros(4)}, epoch=1)
    writer.submit(lambda: gate.wait(5))  # the writer is busy with an earlier file
    writer.submit(lambda state: seen.append(state["w"].clone()), reads=snap)
    taker = threading.Thread(target=lambda: snap.take({"w": torch.ones(4)}, epoch=2))
    taker.start()
    time.sleep(0.2)
    assert taker.is_alive()  # the next epoch's snapshot waits for the copy the queued job is owed
    gate.set()
    taker.join(5)
    writer.drain()
    assert torch.equal(seen[0], torch.zeros(4)) and snap.meta == {"epoch": 2}


def test_padding_the_last_evaluation_batch_changes_no_figure(small_data):
    torch.manual_seed(0)
    net = build_model(dropout=0.0)
    loader = make_loader(small_data, "test", "resident", batch_size=40)  # 60 images: batches of 40 and 20
    plain = evaluate(net, loader, None, True, 10)
    padded = evaluate(net, loader, None, True, 10, pad_to=40)
    assert padded["images"] == plain["images"] == 60 and padded["confusion"] == plain["confusion"]
    assert padded["loss"] == pytest.approx(plain["loss"], rel=1e-6) and padded["top5"] == plain["top5"]


@pytest.mark.slow
def test_last_pt_every_n_epochs_best_pt_at_the_end_and_time_outside_recorded(small_data, tmp_path, monkeypatch):
    writes = []
    save = checkpoint.save_atomic

    def recording(obj, path):
        writes.append((path.name, obj["epoch"], "optimizer" in obj))
        save(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", recording)
    out = tmp_path / "run"
    summary = fit(RunOptions(data=small_data, out=out, recipe=get_recipe("blog").replace(epochs=5, **QUICK),
                             amp="off", checkpoint_every=2, log_every=100))
    last = [e for name, e, _ in writes if name == "last.pt"]
    assert last == [2, 4, 5]  # every 2 epochs, and the last one
    (best,) = [(e, opt) for name, e, opt in writes if name == "best.pt"]  # once, at the end, without momentum
    assert best == (summary["best_epoch"], False)
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch"]
    for r in epochs:
        assert r["outside_seconds"] >= 0 and r["compile_seconds"] == 0
        assert r["epoch_seconds"] == pytest.approx(r["train_seconds"] + r["val_seconds"] + r["outside_seconds"])
    assert summary["outside_seconds"] == pytest.approx(sum(r["outside_seconds"] for r in epochs))
    # best.pt holds the best epoch's weights: evaluated again, they give that epoch's validation loss
    ckpt = checkpoint.load(out / "best.pt")
    net = build_model(dropout=0.0)
    net.load_state_dict(ckpt["model"])
    val = make_loader(small_data, "val", "resident", batch_size=500)
    again = evaluate(net, val, None, False, 10)
    (at_best,) = [r for r in epochs if r["epoch"] == ckpt["epoch"]]
    assert again["loss"] == pytest.approx(at_best["val_loss"], rel=1e-6)


@pytest.mark.slow
def test_a_failure_keeps_the_last_finished_epoch_although_it_was_not_due(small_data, tmp_path, monkeypatch):
    """A crash in epoch 3 with --checkpoint-every 5: last.pt and metrics.jsonl hold epoch 2."""
    real = run_module.train_epoch

    def failing(ctx, net, loader, epoch):
        if epoch == 3:
            raise RuntimeError("the machine fell over")
        return real(ctx, net, loader, epoch)

    monkeypatch.setattr(run_module, "train_epoch", failing)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="fell over"):
        fit(RunOptions(data=small_data, out=out, recipe=get_recipe("blog").replace(epochs=5, **QUICK), amp="off",
                       log_every=100))
    assert checkpoint.load(out / "last.pt")["epoch"] == 2
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch"] == [1, 2]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
def test_a_compiled_run_compiles_in_its_first_epoch_only(small_data, tmp_path):
    """Training, validation (its last batch smaller) and the test evaluation: nothing compiles after epoch 1."""
    out = tmp_path / "run"
    summary = fit(RunOptions(data=small_data, out=out, recipe=get_recipe("blog").replace(epochs=3, **QUICK),
                             amp="off", compile=True, log_every=100))
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch"]
    assert epochs[0]["compile_seconds"] > 0
    assert [r["compile_seconds"] for r in epochs[1:]] == [0.0, 0.0]
    assert summary["compile_seconds"] == pytest.approx(epochs[0]["compile_seconds"])
    assert np.isfinite(summary["test_loss"])
