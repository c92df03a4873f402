"""Opening files named by data on disk, without trusting the names.

A manifest or a split file name that is really `/dev/zero` would make a
"read the whole file" loop run forever, a FIFO would block `open` itself, and
`/etc/shadow` (or a symbolic link to it) is not ours to read. Everything a
converted folder names is opened through `open_regular`, which refuses all of
these with one line before reading a byte.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError


def check_plain_name(name: object, where: str) -> str:
    """`name` if it is a plain file name (no folder part, not `.`/`..`), else DataError."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DataError(f"{where}: file name {name!r} is not a plain name inside the folder; refusing to read it")
    return name


def open_regular(path: Path, *, inside: Path | None = None, missing: str = "no such file") -> BinaryIO:
    """Open `path` for reading if it is a regular file (and, given `inside`, resolves within that folder).

    Devices, FIFOs, sockets and folders are refused without being opened
    (O_NONBLOCK guards the race where one is swapped in meanwhile), as is a
    symbolic link leading out of `inside`. `missing` ends the message for a
    file that does not exist.
    """
    path = Path(path)
    try:
        if inside is not None and path.is_symlink():
            target, root = path.resolve(), Path(inside).resolve()
            if root not in target.parents:
                raise DataError(f"{path}: a symbolic link to {target}, outside {inside}; refusing to read it")
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"{path}: not a regular file; refusing to read it")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop, from resolve()
        raise DataError(f"{path}: cannot open ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path}: not a regular file; refusing to read it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_limited(path: Path, limit: int, *, inside: Path | None = None, missing: str = "no such file") -> bytes:
    """The whole of a small regular file, refusing one larger than `limit` bytes."""
    with open_regular(path, inside=inside, missing=missing) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{path}: larger than {limit:,} bytes; not a file `alexpipe convert` wrote")
    return data


def current_umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(path: Path) -> None:
    """Give `path` the mode an ordinary write would (0666 / 0777 for a folder, less the umask).

    Files written through a temporary name (safetensors does this) or into a
    `mkdtemp` folder are private (0600 / 0700) otherwise.
    """
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())
