"""A benchmark worker whose loaders have a known speed, to test the harness itself (bench/harness.py).

The harness runs it in place of `alexpipe.bench.worker` (`program=`). A
configuration's backend names its loader: "NAME-RATE" yields a fixed batch at
RATE images/s (sleeping), and "no-dali" / "unreadable" fail to build with the
message a missing library or unreadable data gives.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree, as `-m alexpipe` from its root

FAILURES = {"no-dali": "DALI is not installed", "unreadable": "cannot read this folder"}
PROGRAM = (str(Path(__file__).resolve()),)  # what the harness runs: this file


class Sleepy:
    """Yields a fixed batch at `rate` images/s (sleeping): a loader of known speed."""

    def __init__(self, rate: float, batch_size: int, batches: int = 50):
        import torch

        self.rate, self.batch_size, self.batches = rate, batch_size, batches
        self.x = torch.zeros(batch_size, 3, 32, 32)
        self.y = torch.zeros(batch_size, dtype=torch.int64)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            time.sleep(self.batch_size / self.rate)
            yield self.x, self.y


def build(cfg: dict):
    import torch

    from alexpipe.bench.worker import Endless, Work

    if cfg["backend"] in FAILURES:
        raise RuntimeError(FAILURES[cfg["backend"]])
    rate = float(cfg["backend"].rsplit("-", 1)[1])
    src = Endless(Sleepy(rate, cfg["batch_size"]))
    return Work(lambda: len(src.next()[1])), (lambda: 0.0), torch.device("cpu")


if __name__ == "__main__":
    from alexpipe.bench.worker import main

    main(build)
