"""`--help` with its options in named groups, in plain text.

typer groups options into panels (`rich_help_panel`) only when it formats help
with Rich markup, which alexpipe turns off so that "[default: ...]" and user
text print as written. `Grouped` keeps the plain format and groups the
options by their panel anyway: a command with forty options reads as a few
short lists.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

__all__ = ["Grouped"]


class Grouped(TyperCommand):
    """A command whose --help lists its arguments, then its options by panel, in the order they first appear."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            panel = "Arguments" if param.param_type_name == "argument" else \
                getattr(param, "rich_help_panel", None) or "Options"
            groups.setdefault(panel, []).append(record)
        for panel, records in groups.items():
            with formatter.section(panel):
                formatter.write_dl(records)
