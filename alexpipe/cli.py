"""The one `alexpipe` command; each sub-command comes from the package that owns it."""

from __future__ import annotations

import typer

import alexpipe.bench.cli
import alexpipe.pipeline.cli
import alexpipe.train.cli

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
    app()
