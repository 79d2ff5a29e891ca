"""Every recipe shipped in recipes/ validates, unmodified, against the installed components.

The installed components are the built-in ones plus the first-party plugin distributions
the set-up installs (plugins/): the SD3 recipes name `hpsv2`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gdmd.manager import build_plugin_manager
from gdmd.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
# recipes/eval/ holds evaluation metric files (gdmd eval --metrics), checked in tests/eval/.
RECIPES = sorted(
    p for p in (ROOT / "recipes").rglob("*.toml") if p.parent != ROOT / "recipes" / "eval"
)


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
    checker_rewards = {}
    for name, data in dicts.items():
        data.pop("target")
        data["run"].pop("name")
        if name.endswith("_checker"):
            checker_rewards[name] = data.pop("reward")
    reference = dicts.pop("gdmd")
    for name, data in dicts.items():
        if name.endswith("_checker"):
            data["reward"] = reference["reward"]
        assert data == reference, name
    assert set(checker_rewards) == {"gdmd_checker", "reward_weighted_checker"}


def test_checker_recipes_weight_only_the_checker(gdmd_pm) -> None:
    """The *_checker recipes train on the exact checker alone and still report the learned
    reward (weight 0), and each is its unchecked twin with [reward] changed."""
    twins = {"gdmd_checker": "gdmd_direction_shared", "reward_weighted_checker": "reward_weighted"}
    for name, twin in twins.items():
        data = load_recipe(ROOT / "recipes" / "toy" / f"{name}.toml", gdmd_pm).to_dict()
        other = load_recipe(ROOT / "recipes" / "toy" / f"{twin}.toml", gdmd_pm).to_dict()
        rewards = data["reward"]
        assert rewards["checker"]["kind"] == "toy-checker"
        assert rewards["checker"]["weight"] == 1.0
        assert rewards["alignment"]["kind"] == "toy-alignment"
        assert rewards["alignment"]["weight"] == 0.0
        assert data["target"] == other["target"], name
