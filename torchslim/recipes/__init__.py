"""Recipes: Step, Recipe, safe YAML loading, run_recipe, built-in recipes."""

from torchslim.recipes.recipe import (
    Recipe,
    RunReport,
    Step,
    StepReport,
    builtin_recipes,
    load_recipe,
    recipe_from_dict,
    run_recipe,
)

__all__ = [
    "Recipe",
    "RunReport",
    "Step",
    "StepReport",
    "builtin_recipes",
    "load_recipe",
    "recipe_from_dict",
    "run_recipe",
]
