"""The one `alexpipe` command; each sub-command comes from the package that owns it."""

from __future__ import annotations

import typer

import alexpipe.bench.cli
import alexpipe.pipeline.cli
import alexpipe.train.cli
from alexpipe.terminal import console, literal

app = typer.Typer(
    name="alexpipe",
    help="Convert CIFAR-10 once, train AlexNet with a fast input pipeline, benchmark every loader.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text: "[default: ...]" must print as written
)
alexpipe.pipeline.cli.register(app)
alexpipe.train.cli.register(app)
alexpipe.bench.cli.register(app)


def main() -> None:
    """The command; a file that could not be written is one line, whichever sub-command wrote it (the
    sub-commands catch their own errors; this is the last line of defence against a traceback)."""
    from alexpipe.atomic import WriteError

    try:
        app()
    except WriteError as exc:
        console(stderr=True).print(f"[bold red]error:[/] {literal(exc)}")
        raise SystemExit(1) from None
