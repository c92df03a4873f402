"""The named choices of an option, in the form typer shows in --help (`[a|b|c]`) and checks on input.

The choices themselves are plain tuples in light modules (BACKENDS, DEVICES, ...), defined once there.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Iterable

__all__ = ["choice", "plain"]


def choice(name: str, values: Iterable[str]) -> type[Enum]:
    """`values` as an Enum of strings named `name`, which typer turns into a choice."""
    return Enum(name, {v: v for v in values}, type=str)


def plain(value: Any) -> Any:
    """A choice as the plain string it stands for (anything else as it is)."""
    return value.value if isinstance(value, Enum) else value
