"""The one `alexpipe` command; each sub-command comes from the package that owns it."""

from __future__ import annotations

import typer

import bench.cli
import pipeline.cli
import train.cli

app = typer.Typer(
    name="alexpipe",
    help="Convert CIFAR-10 once, train AlexNet with a fast input pipeline, benchmark every loader.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
pipeline.cli.register(app)
train.cli.register(app)
bench.cli.register(app)


def main() -> None:
    app()
