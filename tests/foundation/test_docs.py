"""The docs keep up with the code: hooks, recipe keys and commands are all documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from gdmd import hookspecs
from gdmd.recipe.tables import (
    AccelerateConfig,
    CriticHead,
    EvalConfig,
    LogConfig,
    PromptsHead,
    RewardHead,
    RunConfig,
    StudentHead,
    TargetHead,
    TeacherHead,
    TrainConfig,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
HOOKS = [name for name in dir(hookspecs) if name.startswith("gdmd_")]


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented_with_its_signature(name: str) -> None:
    hook = getattr(hookspecs, name)
    signature = f"{name}({', '.join(inspect.signature(hook).parameters)})"
    assert f"### `{signature}`" in (DOCS / "plugins.md").read_text(encoding="utf-8")
    assert hook.__doc__ and "Implementing this hook" in hook.__doc__


@pytest.mark.parametrize(
    ("table", "model"),
    [
        ("run", RunConfig),
        ("teacher", TeacherHead),
        ("student", StudentHead),
        ("critic", CriticHead),
        ("reward.<label>", RewardHead),
        ("target", TargetHead),
        ("prompts", PromptsHead),
        ("train", TrainConfig),
        ("accelerate", AccelerateConfig),
        ("log", LogConfig),
        ("eval", EvalConfig),
    ],
)
def test_every_recipe_key_is_documented(table: str, model: type) -> None:
    text = (DOCS / "recipes.md").read_text(encoding="utf-8")
    section = re.search(rf"### `\[{re.escape(table)}\]`(.*?)(?=\n### |\n## |\Z)", text, re.S)
    assert section, f"docs/recipes.md has no [{table}] section"
    documented = set(re.findall(r"^\| `(\w+)` \|", section.group(1), re.M))
    assert documented == set(model.model_fields)


@pytest.mark.parametrize("command", ["list-plugins", "validate", "schema", "run"])
def test_every_command_is_documented(command: str) -> None:
    assert f"## `gdmd {command}" in (DOCS / "cli.md").read_text(encoding="utf-8")


def test_component_reference_matches_the_config_models() -> None:
    """docs/components.md is generated; regenerate with `python -m gdmd.docgen`."""
    from pathlib import Path

    from gdmd.docgen import component_reference

    page = Path(__file__).resolve().parents[2] / "docs" / "components.md"
    assert page.read_text() == component_reference(), (
        "docs/components.md is stale: run `python -m gdmd.docgen > docs/components.md`"
    )
