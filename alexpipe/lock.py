"""One process at a time: an exclusive lock on a file, naming its holder, gone when it is released.

`flock` on the lock file: the kernel releases it when the holder exits,
however it exits (kill -9 included), so a stale lock is simply free to take.
The holder writes its PID into the file, so that a process refused can say who
holds it. The file is removed on release; a process that opened it just before
then would lock a file no longer in the folder, so after locking each process
checks that the path still names the file it locked, and tries again if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator, Optional


class LockHeld(Exception):
    """Another live process holds the lock; `pid` is the one it wrote (None if unreadable)."""

    def __init__(self, path: Path, pid: Optional[int]):
        super().__init__(f"{path} is held by process {pid if pid is not None else '(unknown)'}")
        self.path, self.pid = path, pid


def _holder(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _lock_once(path: Path) -> Optional[int]:
    """The locked file's descriptor; None if the file was replaced or removed before the lock was taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)  # the umask decides, as for every file alexpipe makes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(path, _holder(fd)) from None
        held = os.fstat(fd)
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
    except BaseException:
        os.close(fd)
        raise
    if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock file `path` (its folder must exist) for the duration; LockHeld if another process does.
    OSError if the file cannot be made."""
    path = Path(path)
    for _ in range(100):
        fd = _lock_once(path)
        if fd is not None:
            break
    else:
        raise OSError(f"{path} keeps being replaced")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


__all__ = ["LockHeld", "exclusive"]
