"""Ctrl-C and SIGTERM during a benchmark: stop at once, and leave nothing behind.

A benchmark holds nothing worth finishing (unlike a training run, which
finishes its checkpoint first): on the first SIGINT or SIGTERM the command
stops where it is. Both signals raise `Stopped` in the main thread, which
unwinds through the harness (it ends every worker's process group and
removes its temporary folder) to the command, which says what was
interrupted and exits 128 + the signal's number. While that unwinding runs,
further signals are ignored, so a second Ctrl-C cannot cut the clean-up
short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A signal stopped the benchmark. A BaseException, like KeyboardInterrupt, so that no `except Exception`
    on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _handle(signum: int, frame: object) -> None:
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)  # the way out is not interrupted in turn
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block (in the main thread), SIGINT and SIGTERM raise `Stopped`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
