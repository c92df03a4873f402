"""`alexpipe` with probes the tests own, for runs in another process (torchrun, signals).

A test starts this script instead of `-m alexpipe`; it wraps a piece of
alexpipe before running the ordinary command, so the run itself is unchanged
and production code carries no hook:

- PROBE_LOG=file: every training epoch's batches (their split positions), per rank, as JSON lines;
- PROBE_SAVE_PAUSE=seconds: each checkpoint write, once its temporary file is
  written and before it is renamed, prints "PROBE: saving <path>" on stderr and
  pauses, so that a test can signal the run in the middle of a write.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree, as `-m alexpipe` from its root


def _log_batches(path: str) -> None:
    from alexpipe.pipeline.loaders import base

    iterate = base.BaseLoader.__iter__

    def recording_iter(self):
        if self.cfg.split == "train":
            epoch = self.epoch()
            with open(path, "a") as f:
                for k in range(len(epoch)):
                    f.write(json.dumps({"rank": self.cfg.rank, "epoch": epoch.number,
                                        "index": epoch.positions(k).tolist()}) + "\n")
        return iterate(self)

    base.BaseLoader.__iter__ = recording_iter


def _pause_saves(seconds: float) -> None:
    import torch

    save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        print(f"PROBE: saving {getattr(f, 'name', f)}", file=sys.stderr, flush=True)
        time.sleep(seconds)

    torch.save = slow_save


if __name__ == "__main__":
    if os.environ.get("PROBE_LOG"):
        _log_batches(os.environ["PROBE_LOG"])
    if os.environ.get("PROBE_SAVE_PAUSE"):
        _pause_saves(float(os.environ["PROBE_SAVE_PAUSE"]))
    from alexpipe.cli import main

    sys.argv[0] = "alexpipe"
    main()
