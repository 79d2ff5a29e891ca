"""Recipes: one TOML file per run, validated against the registered components.

::

    from gdmd.manager import build_plugin_manager
    from gdmd.recipe import load_recipe

    pm = build_plugin_manager()
    recipe = load_recipe("recipes/tiny_cpu.toml", pm, overrides=["train.steps=10"])
    recipe.teacher.config        # the teacher family's validated ComponentConfig
    recipe.teacher.component     # its ComponentSpec (factory, plugin, version, ...)
    recipe.to_toml()             # resolved.toml: every default filled in

See ``docs/recipes.md`` for every table and key, and :func:`recipe_json_schema` for editors.
"""

from gdmd.recipe.loader import (
    REQUIRED_TABLES,
    TABLES,
    ComponentChoice,
    CriticSpec,
    ModelSpec,
    PromptsSpec,
    Recipe,
    RewardSpec,
    StudentSpec,
    TargetSpec,
    TeacherSpec,
    load_recipe,
    parse_recipe,
)
from gdmd.recipe.overrides import apply_overrides
from gdmd.recipe.schema import recipe_json_schema
from gdmd.recipe.tables import (
    AccelerateConfig,
    EvalConfig,
    LogConfig,
    RunConfig,
)
from gdmd.train.config import TrainConfig

__all__ = [
    "REQUIRED_TABLES",
    "TABLES",
    "AccelerateConfig",
    "ComponentChoice",
    "CriticSpec",
    "EvalConfig",
    "LogConfig",
    "ModelSpec",
    "PromptsSpec",
    "Recipe",
    "RewardSpec",
    "RunConfig",
    "StudentSpec",
    "TargetSpec",
    "TeacherSpec",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "parse_recipe",
    "recipe_json_schema",
]
