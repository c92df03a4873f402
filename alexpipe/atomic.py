"""Every file alexpipe writes appears whole or not at all, and a failed write is one line naming the file.

A file is written to a temporary sibling in the same folder (same file
system, so the rename cannot copy), flushed and fsynced, renamed over its
target, and the folder fsynced so the rename survives a power cut. The
temporary file is removed on any failure, Ctrl-C and SystemExit included, so
a full disk or an interrupt never leaves `.name.tmp-...` litter, and the file
that was there before (a run's previous `last.pt`) stays as it was.

Operating-system failures become `WriteError`: an OSError whose message is
one sentence naming the target and the reason ("no space left on device",
"file name too long", ...). Libraries that wrap an OSError in their own
exception (torch's RuntimeError, safetensors' SafetensorError) are unwrapped
to it by `os_error_in`. Any other exception from a `write` function is left
as it is: it is not the disk's fault.

Light on purpose (standard library only): pipeline, train and bench all use it.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Optional

__all__ = ["WriteError", "fsync_dir", "os_error_in", "reason", "write_atomic", "write_bytes", "write_text"]

# Plain words for the errors a user can do something about; other errors use the system's own text.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "its folder does not exist",
    errno.ENOTDIR: "a part of its path is not a folder",
    errno.EISDIR: "it is a folder",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error",
}

# How Rust libraries (safetensors) spell the number of the OSError they turned into their own exception:
# "(os error 28)", or "Os { code: 28" in their debug form. Python libraries keep the OSError itself in the
# exception's context instead.
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")

_counter = itertools.count()


class WriteError(OSError):
    """A file alexpipe could not write. `filename` is the target (never the temporary file), `strerror` the
    reason in plain words; `str()` is the whole one-line message."""

    def __init__(self, path: "os.PathLike[str] | str", cause: OSError):
        super().__init__(cause.errno, reason(cause), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def reason(exc: OSError) -> str:
    """Why `exc` happened, in words a user can act on."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    text = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc)) or type(exc).__name__
    return text[:1].lower() + text[1:]


def os_error_in(exc: BaseException) -> Optional[OSError]:
    """The operating-system error behind `exc`, if any: `exc` itself, what it was raised from or while
    handling (unless raised `from None`: then it stands on its own), or an errno its message spells out."""
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e
        match = _ERRNO_IN_TEXT.search(str(e))
        if match:
            code = int(next(g for g in match.groups() if g))
            return OSError(code, os.strerror(code))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def _temp_sibling(path: Path) -> Path:
    """A name for the temporary file beside `path`, unique per process, thread and call; never over the
    255-byte name limit (a long target name is cut short in it), so a name that fits still writes."""
    unique = f".tmp-{os.getpid()}-{threading.get_native_id()}-{next(_counter)}"
    stem = os.fsencode(path.name)[:200]
    return path.with_name("." + os.fsdecode(stem) + unique)


def fsync_dir(folder: Path) -> None:
    """Make a rename into `folder` durable; file systems that cannot fsync a folder are let be."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_atomic(path: "os.PathLike[str] | str", write: Callable[[BinaryIO], None], *, fsync: bool = True) -> None:
    """Call `write(f)` on a new temporary file beside `path`, then put it in place of `path` in one rename.

    Safe to call from several threads at once (each call has its own
    temporary name). An OSError, however wrapped, becomes a WriteError naming
    `path`; every other exception passes through unchanged. Either way, and on
    KeyboardInterrupt or SystemExit, the temporary file is gone and `path` is
    as it was.
    """
    path = Path(path)
    tmp = _temp_sibling(path)
    try:
        try:
            with open(tmp, "xb") as f:  # exclusive: never through a link someone planted under the name
                write(f)
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if fsync:
                fsync_dir(path.parent)
        except Exception as exc:  # noqa: BLE001 - only the disk's failures are turned into WriteError
            cause = os_error_in(exc)
            if cause is None:
                raise
            raise WriteError(path, cause) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_bytes(path: "os.PathLike[str] | str", data: bytes, *, fsync: bool = True) -> None:
    """`data` as the whole content of `path`, atomically."""
    write_atomic(path, lambda f: f.write(data), fsync=fsync)


def write_text(path: "os.PathLike[str] | str", text: str, *, fsync: bool = True) -> None:
    """`text` (UTF-8) as the whole content of `path`, atomically."""
    write_bytes(path, text.encode("utf-8"), fsync=fsync)
