"""Recipes: TOML files turned into a validated :class:`Recipe`, and back.

``load_recipe(path, pm)`` reads the file and hands its data to :func:`parse_recipe`
(:mod:`gdmd.recipe.validate`), which applies ``--set`` overrides, resolves every ``kind``
through the registries and validates every table, including each component's own config.
All problems are collected and raised together as one :class:`gdmd.errors.RecipeError`.
``Recipe.to_toml()`` (:mod:`gdmd.recipe.resolved`) writes the recipe back with every
default filled in (a run's ``resolved.toml``); loading that text gives the same recipe.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gdmd.errors import RecipeError
from gdmd.recipe.resolved import (
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
)
from gdmd.recipe.validate import parse_recipe
from gdmd.registry import Registries

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from gdmd.manager import GdmdPluginManager

__all__ = [
    "REQUIRED_TABLES",
    "TABLES",
    "ComponentChoice",
    "CriticSpec",
    "ModelSpec",
    "PromptsSpec",
    "Recipe",
    "RewardSpec",
    "StudentSpec",
    "TargetSpec",
    "TeacherSpec",
    "load_recipe",
    "parse_recipe",
]


def load_recipe(
    path: str | Path,
    registries: Registries | GdmdPluginManager,
    overrides: Sequence[str] = (),
) -> Recipe:
    """Read, override and validate the recipe at ``path``.

    ``registries`` resolves every ``kind``: a plugin manager (whose unknown-name errors
    also name plugins that failed to load) or bare :class:`Registries`. Raises
    :class:`RecipeError` listing every problem.
    """
    path = Path(path)
    label = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RecipeError([f"{label}: file not found"]) from None
    except IsADirectoryError:
        raise RecipeError([f"{label}: is a directory, not a recipe file"]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError([f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise RecipeError([f"{label}: cannot read the file ({exc.strerror})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"{label}: {_toml_error(exc)}"]) from None
    return parse_recipe(data, path, registries, overrides)


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    where = "invalid TOML"
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        where = f"line {match[1]}, column {match[2]}: invalid TOML"
        message = message[: match.start()]
    elif message.endswith("(at end of document)"):
        where = "end of file: invalid TOML"
        message = message.removesuffix("(at end of document)").rstrip()
    return f"{where}: {message[:1].lower()}{message[1:]}"
