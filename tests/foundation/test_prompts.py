"""The built-in prompt sources ``list`` and ``text-file`` (the data sources: tests/prompts/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gdmd.builtins.prompts import PromptFileError, PromptList
from gdmd.errors import RecipeError
from gdmd.interfaces import PromptSource
from gdmd.recipe import parse_recipe

TEACHER = {"teacher": {"kind": "fake-unet"}}


def build_prompts(pm: Any, table: dict[str, Any]) -> Any:
    recipe = parse_recipe({**TEACHER, "prompts": table}, "x.toml", pm)
    return recipe.prompts.build(None)


def test_list_source_samples_with_the_generator(fake_pm: Any) -> None:
    source = build_prompts(
        fake_pm, {"kind": "list", "prompts": ["a", "b", "c"], "eval_prompts": ["held out"]}
    )
    assert isinstance(source, PromptSource)
    first = source.sample(32, torch.Generator().manual_seed(0))
    again = source.sample(32, torch.Generator().manual_seed(0))
    assert first == again and len(first) == 32 and set(first) == {"a", "b", "c"}
    assert source.evaluation_prompts() == ["held out"]


def test_text_file_source(fake_pm: Any, tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a red circle\n\n  two squares  \n", encoding="utf-8")
    (tmp_path / "eval.txt").write_text("a blue star\n", encoding="utf-8")
    source = build_prompts(
        fake_pm,
        {
            "kind": "text-file",
            "path": str(tmp_path / "train.txt"),
            "eval_path": str(tmp_path / "eval.txt"),
        },
    )
    assert source.prompts == ["a red circle", "two squares"]
    assert source.evaluation_prompts() == ["a blue star"]


def test_text_file_errors_name_the_file(fake_pm: Any, tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(RecipeError) as info:
        build_prompts(fake_pm, {"kind": "text-file", "path": str(missing)})
    assert info.value.problems == [f"x.toml: [prompts] path: prompt file {missing} does not exist"]
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=f"prompt file {blank} has no prompts"):
        build_prompts(fake_pm, {"kind": "text-file", "path": str(blank)})


def test_prompt_list_needs_prompts() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PromptList([])
