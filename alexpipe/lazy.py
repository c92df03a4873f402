"""Names a package exports but imports only when first used (PEP 562).

The packages' heavy parts (torch, numpy) stay unloaded until a command needs
them, so `alexpipe --help` and the command-line choices answer at once.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: `exports` maps a name to the relative module defining it."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)  # found directly from now on
        return value

    return __getattr__
