"""Paths the operating system would refuse for their length, caught before anything uses them.

Linux refuses a name of more than 255 bytes in one component and a path of
4,096 bytes or more with ENAMETOOLONG, from whichever call meets it first
(`Path.exists`, `resolve`, `open`...): a traceback, or an error naming a file
the user never wrote. Each command checks the paths it was given up front
and says so in one line naming the flag.
"""

from __future__ import annotations

import os
from typing import Optional

from alexpipe.terminal import fail

__all__ = ["GROWS", "NAME_MAX", "PATH_MAX", "check_fits", "too_long"]

NAME_MAX = 255  # bytes in one name (ext4, xfs, btrfs, tmpfs)
PATH_MAX = 4096  # bytes in a whole path, its terminating NUL included
# What alexpipe adds to a path it writes into or beside: "/" and a file name, or a temporary sibling's name
# (alexpipe.atomic: ".<name>.tmp-<pid>-<thread>-<n>").
GROWS = 64


def too_long(path: "os.PathLike[str] | str", *, beside: int = 0, grows: int = 0) -> Optional[str]:
    """Why `path` is too long for the file system, or None.

    `beside`: bytes that names made beside it add to its last name (a
    temporary folder, a lock file); `grows`: bytes that the longest path made
    from it adds (the files in a run folder, a temporary sibling's name).
    """
    given = os.fsencode(os.fspath(path))
    names = [n for n in given.split(b"/") if n]
    longest = max(names, key=len, default=b"")
    if len(longest) > NAME_MAX:
        return f"file name too long (a name of {len(longest):,} bytes; the limit is {NAME_MAX})"
    if names and len(names[-1]) + beside > NAME_MAX:
        return (f"file name too long (a last name of {len(names[-1]):,} bytes; at most {NAME_MAX - beside} here, "
                "leaving room for the temporary names made beside it)")
    absolute = os.fsencode(os.path.abspath(os.fspath(path)))
    longest_path = max(len(given), len(absolute)) + max(beside, grows)
    if longest_path >= PATH_MAX:
        return (f"file name too long (the path is {len(absolute):,} bytes; at most "
                f"{PATH_MAX - 1 - max(beside, grows):,} here)")
    return None


def check_fits(flag: str, path: "os.PathLike[str] | str", *, beside: int = 0, grows: int = 0) -> None:
    """Fail with one line naming `flag` if `path`, or what is made from it, is too long for the file system."""
    why = too_long(path, beside=beside, grows=grows)
    if why:
        fail(f"{flag} {path}: {why}")
