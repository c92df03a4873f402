"""The command line's options: the same set as before the code behind them was reorganised, and every recipe
field an option of `train` (made from the field, so that adding a field adds its option)."""

from __future__ import annotations

import dataclasses

import typer

from alexpipe.cli import app
from alexpipe.train.recipes import Recipe

# every option and argument of every command, as `--help` offers them (recorded before the reorganisation)
OPTIONS = {
    "bench": ["--augment", "--backends", "--batch-sizes", "--both-layouts", "--channels-last", "--compile",
              "--cuda-graphs", "--data", "--device", "--dtype", "--duration", "--no-augment", "--no-channels-last",
              "--no-compile", "--no-cuda-graphs", "--out", "--pca", "--repeats", "--settle", "--warmup", "--workers",
              "what"],
    "convert": ["--allow-partial", "--beton", "--download", "--download-dir", "--force", "--md5",
                "--no-allow-partial", "--no-beton", "--no-force", "--out", "--seed", "--source", "--url",
                "--val-size", "-o", "-s"],
    "evaluate": ["--amp", "--batch-size", "--data", "--device", "--json", "--loader", "--no-tta-flip", "--split",
                 "--tta-flip", "checkpoint_path"],
    "info": ["--no-verify", "--verify", "data"],
    "train": ["--amp", "--batch-size", "--channels-last", "--checkpoint-every", "--clip-grad-norm", "--compile",
              "--compile-mode", "--cuda-graphs", "--data", "--device", "--dist-timeout", "--dropout", "--epochs",
              "--eval-subset", "--force", "--gamma", "--init", "--inputs", "--label-smoothing", "--loader",
              "--log-every", "--lr", "--model", "--momentum", "--nesterov", "--no-channels-last", "--no-cuda-graphs",
              "--no-nesterov", "--no-tta-flip", "--out", "--patience", "--pca", "--pca-sigma", "--recipe",
              "--resume", "--scale-lr", "--schedule", "--seed", "--step-epochs", "--subset", "--tta-flip",
              "--warmup-epochs", "--weight-decay", "--workers"],
}


def _options() -> dict[str, list[str]]:
    group = typer.main.get_command(app)
    return {name: sorted(o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", [])))
            for name, cmd in group.commands.items()}


def test_every_command_keeps_its_options():
    assert _options() == OPTIONS


def test_every_recipe_field_is_an_option_of_train_in_the_recipe_panel():
    train = typer.main.get_command(app).commands["train"]
    panels = {o: getattr(p, "rich_help_panel", None) for p in train.params for o in p.opts}
    for f in dataclasses.fields(Recipe):
        if f.name != "name":
            assert panels[f"--{f.name.replace('_', '-')}"] == "Recipe", f.name
