"""``gdmd sample`` and ``gdmd eval`` on a finished tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from gdmd.cli import make_app


@pytest.fixture
def finished_run(gdmd_pm, write_recipe) -> Path:
    recipe_path = write_recipe(train="ema_decay = 0.5")
    result = CliRunner().invoke(
        make_app(gdmd_pm), ["run", str(recipe_path), "--set", "train.steps=2"]
    )
    assert result.exit_code == 0, result.output
    return recipe_path.parent / "runs" / "tiny"


def test_sample_writes_one_png_per_prompt_and_an_index(gdmd_pm, finished_run, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    out = tmp_path / "samples"
    app = make_app(gdmd_pm)
    args = ["sample", str(finished_run), "--prompts-file", str(prompts), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--seed", "5"])
    assert result.exit_code == 0, result.output
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert index == [
        {"prompt": "a red circle", "seed": 5, "file": "00000.png"},
        {"prompt": "a blue square", "seed": 6, "file": "00001.png"},
    ]
    first = Image.open(out / "00000.png")
    assert first.size == (8, 8) and first.mode == "RGB"
    # Same seed, same image; the teacher samples too.
    again = tmp_path / "again"
    assert CliRunner().invoke(app, [*args[:-1], str(again), "--seed", "5"]).exit_code == 0
    assert (again / "00000.png").read_bytes() == (out / "00000.png").read_bytes()
    teacher = tmp_path / "teacher"
    result = CliRunner().invoke(
        app, [*args[:-1], str(teacher), "--model", "teacher", "--steps", "3"]
    )
    assert result.exit_code == 0, result.output
    assert len(list(teacher.glob("*.png"))) == 2


def test_eval_compares_runs_and_writes_json_and_markdown(gdmd_pm, finished_run) -> None:
    result = CliRunner().invoke(
        make_app(gdmd_pm), ["eval", str(finished_run), "--teacher", "--teacher-steps", "3"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((finished_run / "eval.json").read_text())
    assert [r["model"] for r in rows] == ["teacher", "student"]
    assert [r["steps"] for r in rows] == [3, 2]
    for row in rows:
        assert row["num_images"] == 2  # the two eval_prompts, seed 0
        assert set(row["metrics"]) == {"reward/red", "images_per_s"}
        assert row["metrics"]["images_per_s"] > 0
    markdown = (finished_run / "eval.md").read_text()
    assert markdown.startswith("| model | steps | images | reward/red | images_per_s |")
    grid = Image.open(finished_run / "comparison.png")  # one row per model, 2 prompts
    assert grid.width > grid.height > 2 * 8 * 4


def test_sample_rejects_a_folder_that_is_not_a_run(gdmd_pm, tmp_path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    result = CliRunner().invoke(
        make_app(gdmd_pm),
        ["sample", str(tmp_path), "--prompts-file", str(prompts), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert "is not a run directory: it has no resolved.toml" in result.output


def test_headroom_rows_match_gdmd_eval_on_the_same_noise(gdmd_pm, finished_run) -> None:
    """benchmarks/headroom.py: one row per teacher step count, then the student's sampler on
    the teacher's weights; the teacher rows are the images `gdmd eval --teacher` makes."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "headroom.py"
    spec = importlib.util.spec_from_file_location("_bench_headroom", path)
    headroom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headroom)

    rows = headroom.headroom(finished_run, steps=[1, 3], seeds=[0])
    assert [(r["model"], r["nfe"]) for r in rows] == [
        ("teacher, 1 steps", 2),
        ("teacher, 3 steps", 6),
        ("student sampler on the teacher", 2),
    ]
    result = CliRunner().invoke(
        make_app(gdmd_pm), ["eval", str(finished_run), "--teacher", "--teacher-steps", "3"]
    )
    assert result.exit_code == 0, result.output
    teacher = json.loads((finished_run / "eval.json").read_text())[0]["metrics"]
    assert rows[1]["reward/red"] == pytest.approx(teacher["reward/red"], abs=1e-6)
    assert rows[0]["reward/red"] != pytest.approx(rows[1]["reward/red"], abs=1e-6)
    table = headroom.markdown(rows)
    assert table.splitlines()[0] == "| model | NFE | reward/red |"
    assert "| student sampler on the teacher | 2 | " in table
