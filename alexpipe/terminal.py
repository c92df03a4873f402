"""Printing text that came from outside (paths, archive member names, class names) safely.

Rich reads "[...]" as markup, so a folder named "[/x]" crashes a print with
MarkupError and "[red]x[/red]" prints as red "x"; and a terminal obeys escape
sequences, so a class name holding "\\x1b[31m" would recolour (or worse) the
user's terminal. Every CLI prints user-supplied text through `literal`, and
fails through `fail`, so neither can happen anywhere.
"""

from __future__ import annotations

import unicodedata
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["console", "fail", "literal", "note"]

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Characters that reorder or hide the text around them (bidirectional
# overrides and isolates): harmless bytes, but they make a name display as
# something it is not.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(ch: str) -> bool:
    """True for characters a terminal would act on, or that hide what a name really is."""
    if ch in _BIDI:
        return True
    # Cc: C0/C1 controls and DEL (ESC included); Cs: lone surrogates (undecodable
    # bytes of a file name); Zl/Zp: line and paragraph separators.
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")


def _visible(ch: str) -> str:
    """A printable spelling of `ch`, as Python would write it in a string literal."""
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:  # a raw byte of a non-UTF-8 file name (surrogateescape)
        return f"\\x{cp - 0xDC00:02x}"
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def literal(text: object) -> str:
    """`text` as Rich markup that prints exactly as written, on one line.

    Rich markup is escaped and control characters (ESC, newlines, ...) become
    visible escapes such as ``\\x1b``, so nothing in `text` can style, move or
    wrap the output.
    """
    s = str(text)
    if any(_unsafe(c) for c in s):
        s = "".join(_visible(c) if _unsafe(c) else c for c in s)
    return escape(s)


def console(stderr: bool = False) -> Console:
    """A Console for CLI output: no emoji codes (":x:" in a name stays ":x:"), no guessed highlighting,
    and no wrapping of long lines (an error stays one line when piped)."""
    return Console(stderr=stderr, emoji=False, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """`note: <message>` on stderr; `message` is printed literally."""
    console(stderr=True).print(f"[bold]note:[/] {literal(message)}")


def fail(message: str, code: int = 1) -> NoReturn:
    """`error: <message>` on stderr as one literal line, then exit with status `code`."""
    console(stderr=True).print(f"[bold red]error:[/] {literal(message)}")
    raise typer.Exit(code)
