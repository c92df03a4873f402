"""Ctrl-C that never lands in the middle of a checkpoint write.

The first SIGINT only raises a flag; the loop checks it between steps and
stops there, after which nothing half-written can exist. A second SIGINT
interrupts at once, for a user who really means it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional


class Interrupted(Exception):
    """Raised by the loop at a step boundary after a Ctrl-C."""


class GracefulInterrupt:
    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def check(self) -> None:
        if self.requested:
            raise Interrupted
