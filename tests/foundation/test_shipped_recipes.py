"""Every recipe shipped in recipes/ validates, unmodified, against the installed components.

The installed components are the built-in ones plus the first-party plugin distributions
the set-up installs (plugins/): the SD3 recipes name `hpsv2`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gdmd.manager import build_plugin_manager
from gdmd.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").rglob("*.toml"))


def test_there_are_recipes() -> None:
    names = {p.name for p in RECIPES}
    assert {"tiny_cpu.toml", "gdmd.toml", "dmd.toml", "dmdr.toml", "sd3_4step.toml"} <= names


@pytest.fixture(scope="module")
def installed_pm():
    pm = build_plugin_manager()
    assert pm.failures == [], [f.describe() for f in pm.failures]
    return pm


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_is_valid(path: Path, installed_pm) -> None:
    recipe = load_recipe(path, installed_pm)
    assert recipe.source == path


def test_toy_recipes_differ_only_in_target_and_name(gdmd_pm) -> None:
    toy = [p for p in RECIPES if p.parent.name == "toy"]
    dicts = {p.stem: load_recipe(p, gdmd_pm).to_dict() for p in toy}
    for data in dicts.values():
        data.pop("target")
        data["run"].pop("name")
    reference = dicts.pop("gdmd")
    for name, data in dicts.items():
        assert data == reference, name
