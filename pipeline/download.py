"""Fetch the official archive and check it against its published md5."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .cache import cache_dir
from .errors import DataError
from .hashing import file_hexdigests

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# The published md5 of the python version (sources.OFFICIAL_MD5 takes it from here: this
# module stays free of numpy, so `alexpipe --help` can import it at no cost).
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"


def download(url: str = OFFICIAL_URL, dest_dir: Path | None = None, md5: str = OFFICIAL_MD5,
             on_bytes: Callable[[int, int | None], None] = lambda done, total: None) -> Path:
    """Download `url` into `dest_dir` unless a copy with the right md5 is there.

    The file appears under its final name only once its md5 matched; a
    mismatch or an interrupted transfer leaves nothing behind.
    """
    dest_dir = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir()
    dest = dest_dir / (Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).name or "cifar-10-python.tar.gz")
    if dest.exists() and file_hexdigests(dest, "md5")[0] == md5:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=30) as resp:
                    total = resp.headers.get("Content-Length")
                    total = int(total) if total and total.isdigit() else None
                    done = 0
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        on_bytes(done, total)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DataError(
                    f"cannot download {url} ({reason}); if this machine is offline, fetch "
                    "cifar-10-python.tar.gz elsewhere and pass --source PATH"
                ) from None
        got = h.hexdigest()
        if got != md5:
            raise DataError(f"downloaded {url} has md5 {got}, expected {md5}; the file was discarded")
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)
