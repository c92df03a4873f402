"""Fetch the official archive and check it against its published md5."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from alexpipe.atomic import WriteError, write_atomic

from ..cache import cache_dir
from ..errors import DataError
from ..hashing import file_hexdigests

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# The published md5 of the python version (sources.OFFICIAL_MD5 takes it from here: this
# module stays free of numpy, so `alexpipe --help` can import it at no cost).
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"


def download(url: str = OFFICIAL_URL, dest_dir: Path | None = None, md5: str = OFFICIAL_MD5,
             on_bytes: Callable[[int, int | None], None] = lambda done, total: None) -> Path:
    """Download `url` into `dest_dir` unless a copy with the right md5 is there.

    The file appears under its final name only once its md5 matched
    (`alexpipe.atomic`): a mismatch, an interrupted transfer or a full disk
    leaves nothing behind. A network failure is a DataError, a disk failure a
    WriteError naming the file; both one line.
    """
    dest_dir = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir()
    dest = dest_dir / (Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).name or "cifar-10-python.tar.gz")
    if dest.is_file() and file_hexdigests(dest, "md5")[0] == md5:
        return dest
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(dest_dir, exc) from None

    def fetch(out: BinaryIO) -> None:
        h = hashlib.md5()
        done = 0
        with _network(url):
            resp = urllib.request.urlopen(url, timeout=30)
        with resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            while True:
                with _network(url):
                    chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)  # a failure here is the disk's: write_atomic names the file
                h.update(chunk)
                done += len(chunk)
                on_bytes(done, total)
        got = h.hexdigest()
        if got != md5:
            raise DataError(f"downloaded {url} has md5 {got}, expected {md5}; the file was discarded")

    write_atomic(dest, fetch)
    return dest


@contextlib.contextmanager
def _network(url: str) -> Iterator[None]:
    """A failure of the network (or the URL) as one DataError line."""
    try:
        yield
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {url} ({reason}); if this machine is offline, fetch "
            "cifar-10-python.tar.gz elsewhere and pass --source PATH"
        ) from None
