"""The loop, recipes, checkpoints, metrics and the `train` / `evaluate` commands."""

from .recipes import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "get_recipe"]
