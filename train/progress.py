"""How a training run shows its progress: a live bar on a terminal, plain lines when the output is piped.

A rich progress bar redraws one line in place, which a pipe (`make run | tee
log`, nohup, a CI log) cannot show: there it would print nothing for a whole
epoch, minutes on a CPU. So when stderr is not a terminal, a plain line is
printed at the first update of each epoch and then at most every `interval`
seconds.
"""

from __future__ import annotations

import time
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


class EpochProgress:
    """Progress of the epoch being trained; `update` only ever receives values already on the host."""

    def __init__(self, console: Console, interval: float = 5.0):
        self.console, self.interval = console, interval
        self.bar: Optional[Progress] = None
        if console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"), console=console, transient=True)
        self._task: Optional[TaskID] = None
        self._epoch, self._steps, self._printed = 0, 0, float("-inf")

    def __enter__(self) -> "EpochProgress":
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def begin(self, epoch: int, steps: int) -> None:
        self._epoch, self._steps, self._printed = epoch, steps, float("-inf")
        if self.bar:
            self._task = self.bar.add_task(f"epoch {epoch}", total=steps, info="")

    def update(self, step: int, info: str) -> None:
        if self.bar:
            self.bar.update(self._task, completed=step, info=info)
            return
        now = time.monotonic()
        if now - self._printed >= self.interval:
            self._printed = now
            self.console.print(f"epoch {self._epoch}  step {step}/{self._steps}  {info}", highlight=False)

    def end(self) -> None:
        if self.bar and self._task is not None:
            self.bar.remove_task(self._task)
            self._task = None
