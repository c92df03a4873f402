"""`alexpipe` with a probe the test owns: every training batch's split positions, per rank, as JSON lines.

torchrun starts this script instead of `-m alexpipe`; it wraps the loaders'
batch emission before running the ordinary command, so the run itself is
unchanged and production code carries no hook. PROBE_LOG names the file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree, as `-m alexpipe` from its root

from alexpipe.pipeline.loaders import base  # noqa: E402

_emit = base.BaseLoader._emit


def _recording_emit(self, images, k):
    if self.cfg.split == "train":
        with open(os.environ["PROBE_LOG"], "a") as f:
            f.write(json.dumps({"rank": self.cfg.rank, "epoch": self.epoch,
                                "index": self.batch_index(k).tolist()}) + "\n")
    return _emit(self, images, k)


base.BaseLoader._emit = _recording_emit

if __name__ == "__main__":
    from alexpipe.cli import main

    sys.argv[0] = "alexpipe"
    main()
