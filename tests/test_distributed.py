"""torchrun + DistributedDataParallel on CPU (gloo): sharding, sync, and equivalence with one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
import torch

from alexpipe.train import checkpoint
from alexpipe.train.run import _subset
from alexpipe.pipeline import load_split

from conftest import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, *args, probe: Path | None = None) -> subprocess.CompletedProcess:
    """`alexpipe train` under torchrun; with `probe`, through tests/probe.py, which logs each rank's batches."""
    program = [str(ROOT / "tests" / "probe.py")] if probe else ["-m", "alexpipe"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *program, "train", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"PROBE_LOG": str(probe)} if probe else {})}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.real_data
def test_two_ranks_shard_every_image_once_and_stay_in_sync(real_data, tmp_path):
    log = tmp_path / "index.jsonl"
    res = torchrun(2, "--data", real_data, "--out", tmp_path / "ddp", "--subset", 1000, "--eval-subset", 200,
                   "--epochs", 1, "--batch-size", 100, "--lr", 0.05, probe=log)
    assert res.returncode == 0, res.stdout + res.stderr
    seen = {0: [], 1: []}
    for rec in read_jsonl(log):
        seen[rec["rank"]] += rec["index"]
    subset = _subset(load_split(real_data, "train").labels.numpy(), 1000, 0, 10)
    assert not set(seen[0]) & set(seen[1])  # no image on both ranks
    assert len(seen[0]) == len(seen[1]) == 500
    assert sorted(seen[0] + seen[1]) == sorted(subset.tolist())  # together: the whole subset, once
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["rank_weight_digests"])) == 1
    (epoch,) = [r for r in read_jsonl(tmp_path / "ddp" / "metrics.jsonl") if r["type"] == "epoch"]
    assert epoch["val_images"] == 200 and summary["test_images"] == 200  # every eval image exactly once
    assert epoch["train_images"] == 1000


@pytest.mark.real_data
def test_two_processes_follow_one_process_at_the_same_global_batch(real_data, tmp_path):
    # Comparable by construction: the resident loader draws each image's augmentation from (seed, epoch,
    # image), not from the rank; rank r takes every other image of one shared permutation, so global step k
    # sees the same 128 images either way; DDP averages the two half-batch gradients into the full-batch
    # gradient. Dropout is the one per-process random draw left, so it is off; float32 keeps reduction-order
    # differences at rounding level.
    common = ["--data", real_data, "--subset", 1280, "--eval-subset", 200, "--epochs", 2, "--batch-size", 128,
              "--lr", 0.05, "--dropout", 0, "--amp", "off", "--log-every", 1]
    one = subprocess.run([sys.executable, "-m", "alexpipe", "train", *map(str, common), "--out", tmp_path / "one"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stdout + one.stderr
    two = torchrun(2, *common, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stdout + two.stderr
    e1 = [r for r in read_jsonl(tmp_path / "one" / "metrics.jsonl") if r["type"] == "epoch"]
    e2 = [r for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if r["type"] == "epoch"]
    for a, b in zip(e1, e2):
        assert a["train_images"] == b["train_images"] == 1280
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    wa = checkpoint.load(tmp_path / "one" / "last.pt")["model"]
    wb = checkpoint.load(tmp_path / "two" / "last.pt")["model"]
    for k in wa:  # equal up to float rounding accumulated over 20 steps
        assert (wb[k] - wa[k]).norm() <= 1e-3 * wa[k].norm(), k
