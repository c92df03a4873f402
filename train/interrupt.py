"""Ctrl-C and SIGTERM that never land in the middle of a checkpoint write.

The first SIGINT or SIGTERM only raises a flag; the loop checks it between
steps and stops there, after which nothing half-written can exist (a
checkpoint being written is finished first). A second signal interrupts at
once, for a user (or a scheduler) who really means it: a checkpoint write it
cuts short removes its temporary file, and the previous checkpoint stays.
"""

from __future__ import annotations

import signal
import threading
from abc import ABC, abstractmethod
from types import FrameType
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Raised by the loop at a step boundary after a signal; `signum` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalScope(ABC):
    """While active (the main thread only), SIGINT and SIGTERM go to `_handle`; the previous handlers after.
    Each kind of scope says what a signal does there."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}

    @abstractmethod
    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        """Called in the main thread when SIGINT or SIGTERM arrives inside the scope."""

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class StopNow(_SignalScope):
    """SIGINT and SIGTERM raise Interrupted at once: for the work before the first step and after the last
    (verifying data, building, testing), where there is nothing to finish."""

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        raise Interrupted(signum)


class GracefulInterrupt(_SignalScope):
    """SIGINT and SIGTERM set `requested` (the signal's number); the loop stops at the next step boundary."""

    def __init__(self) -> None:
        super().__init__()
        self.requested: Optional[int] = None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.requested = signum

    def check(self) -> None:
        if self.requested is not None:
            raise Interrupted(self.requested)
