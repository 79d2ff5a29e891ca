"""A recipe's ``[eval.metrics.<label>]`` tables: the metrics ``gdmd eval RUN --prompts FILE``
uses when no ``--metrics`` file is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.manager import build_plugin_manager


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(load_entrypoints=False)


def _run(root: Path, teacher_dir: Path, pm, eval_tables: str) -> Path:  # type: ignore[no-untyped-def]
    from train.conftest import tiny_recipe

    root.mkdir(parents=True)
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(root / "runs", teacher_dir) + eval_tables)
    result = CliRunner().invoke(make_app(pm), ["run", str(recipe), "--set", "train.steps=1"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


def _eval(pm, run: Path, out: Path):  # type: ignore[no-untyped-def]
    prompts = out.parent / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    args = ["eval", str(run), "--prompts", str(prompts), "--seeds", "0", "--out", str(out)]
    return CliRunner().invoke(make_app(pm), args)


def test_the_recipe_eval_metrics_replace_the_rewards_as_default_metrics(
    pm, teacher_dir, tmp_path
) -> None:
    run = _run(tmp_path / "a", teacher_dir, pm, '\n[eval.metrics.x]\nkind = "brightness"\n')
    resolved = tomllib.loads((run / "resolved.toml").read_text())
    assert resolved["eval"]["metrics"] == {"x": {"kind": "brightness"}}
    out = tmp_path / "a" / "out"
    result = _eval(pm, run, out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval.json").read_text())
    assert list(summary["metrics"]) == ["x"]  # not the recipe's [reward.red]
    assert summary["metrics"]["x"]["kind"] == "brightness"
    means = summary["means"]["x"]["tiny"]["all"]
    assert 0.0 <= means["mean"] <= 1.0 and means["images"] == 2


def test_without_eval_metrics_the_resolved_recipe_has_no_metrics_table(
    pm, teacher_dir, tmp_path
) -> None:
    run = _run(tmp_path / "b", teacher_dir, pm, "")
    text = (run / "resolved.toml").read_text()
    assert "[eval]" in text and "[eval.metrics]" not in text
    assert "metrics" not in tomllib.loads(text)["eval"]


def test_a_bad_eval_metric_is_reported_with_the_recipe_and_key(pm, teacher_dir, tmp_path) -> None:
    tables = '\n[eval.metrics.x]\nkind = "brightness"\ntarget = "high"\n'
    run = _run(tmp_path / "c", teacher_dir, pm, tables)
    result = _eval(pm, run, tmp_path / "c" / "out")
    assert result.exit_code == 2, result.output
    assert "resolved.toml [eval]" in result.output and "target" in result.output
    assert "Traceback" not in result.output
