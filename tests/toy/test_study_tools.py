"""The statistics of the target diagnostics and the paired table of the toy benchmark."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


diagnostics = _load("target_diagnostics")
toy = _load("toy")


def test_within_group_r2_and_spearman_see_only_within_group_variation() -> None:
    t = np.array([[0.1, 0.5, 0.9], [0.2, 0.4, 0.6]])
    # Reward = group offset + 2 t: all within-group variance is t's; the offsets are ignored.
    r = np.array([[10.0], [-5.0]]) + 2.0 * t
    assert diagnostics.within_r2(r, t) == pytest.approx(1.0)
    assert diagnostics.within_spearman(r, t) == pytest.approx(1.0)
    assert diagnostics.within_spearman(-r, t) == pytest.approx(-1.0)
    # Centred t (-0.4, 0, 0.4) and a wiggle (1, -2, 1) orthogonal to it: R2 = 0.
    assert diagnostics.within_r2(np.array([[1.0, -2.0, 1.0]]), t[:1]) == pytest.approx(0.0)
    shared = np.full((2, 3), 0.5)
    assert math.isnan(diagnostics.within_r2(r, shared))
    assert math.isnan(diagnostics.within_spearman(r, shared))


def test_auc_overall_and_within_groups_on_hand_built_values() -> None:
    r = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    ok = np.array([[True, False, False], [False, False, False]])
    # Correct: 3; incorrect: 1, 2, 0, 5, 4 -> beats 3 of 5.
    assert diagnostics.auc(r.reshape(-1), ok.reshape(-1)) == pytest.approx(0.6)
    # Only group 0 has both verdicts: 3 beats 1 and 2.
    assert diagnostics.within_auc(r, ok) == (1.0, 2)
    tie = diagnostics.within_auc(np.array([[1.0, 1.0]]), np.array([[True, False]]))
    assert tie == (0.5, 1)
    assert math.isnan(diagnostics.within_auc(r, np.zeros_like(ok))[0])


def test_paired_table_takes_differences_seed_by_seed() -> None:
    def row(acc: float, reward: float, fd: float) -> dict[str, float]:
        return {"accuracy": acc, "reward/alignment": reward, "fd": fd}

    data = {
        "teacher": [row(0.20, 40.0, 50.0)],
        "students": {
            "gdmd": [row(0.30, 41.0, 10.0), row(0.26, 42.0, 40.0), row(0.34, 40.0, 90.0)],
            "dmd": [row(0.25, 40.0, 20.0), row(0.21, 41.0, 80.0), row(0.29, 39.0, 180.0)],
        },
    }
    table = toy.paired_markdown(data)
    # Every seed is +0.05 accuracy, +1 reward and half the FD: the intervals collapse.
    assert "| gdmd | 3 | +0.050 [+0.050, +0.050] | +1.00 [+1.00, +1.00] |" in table
    assert "| 0.50 [0.50, 0.50] |" in table
    # Against the teacher: 0.10, 0.06, 0.14 -> mean 0.10, t(2) = 4.303, sd 0.04.
    half = 4.303 * 0.04 / math.sqrt(3)
    assert f"+0.100 [{0.1 - half:+.3f}, {0.1 + half:+.3f}]" in table
    assert toy.paired_markdown({**data, "students": {"gdmd": data["students"]["gdmd"]}}) == ""
    # A missing run: recorded seeds pair seed 2 with seed 2, not with the next row.
    partial = {
        **data,
        "students": {
            "gdmd": [row(0.30, 41.0, 10.0), row(0.34, 40.0, 90.0)],
            "dmd": data["students"]["dmd"],
        },
        "student_seeds": {"gdmd": [0, 2], "dmd": [0, 1, 2]},
    }
    assert "| gdmd | 2 | +0.050 [+0.050, +0.050] | +1.00 [+1.00, +1.00] |" in toy.paired_markdown(
        partial
    )


def _row(acc: float, reward: float, fd: float) -> dict[str, float]:
    return {"accuracy": acc, "reward/alignment": reward, "fd": fd}


def _part(students: dict, teacher_acc: float = 0.20) -> dict:
    return {
        "teacher_steps": 50,
        "eval_seeds": [0, 1, 2],
        "teacher": [_row(teacher_acc, 40.0, 50.0)],
        "students": students,
        "curves": {name: [[[0, 0.2, 37.0]]] for name in students},
        "student_seeds": {name: list(range(len(rows))) for name, rows in students.items()},
    }


def test_results_of_separate_evaluations_merge_and_refuse_mismatches() -> None:
    a = _part({"dmd": [_row(0.25, 40.0, 20.0), _row(0.21, 41.0, 80.0)]})
    b = _part({"dmdr": [_row(0.27, 42.0, 200.0), _row(0.22, 42.0, 400.0)]})
    merged = toy.merge_results([a, b])
    assert list(merged["students"]) == ["dmd", "dmdr"]
    assert merged["student_seeds"] == {"dmd": [0, 1], "dmdr": [0, 1]}
    assert merged["curves"]["dmdr"] == [[[0, 0.2, 37.0]]]
    with pytest.raises(SystemExit, match="recipe 'dmd' is in more than one file"):
        toy.merge_results([a, a])
    with pytest.raises(SystemExit, match="eval_seeds differs"):
        toy.merge_results([a, {**b, "eval_seeds": [0]}])
    with pytest.raises(SystemExit, match="another teacher"):
        toy.merge_results([a, _part(b["students"], teacher_acc=0.30)])


def test_docs_get_one_paired_table_per_baseline(tmp_path: Path, monkeypatch) -> None:
    data = _part(
        {
            "gdmd": [_row(0.30, 41.0, 10.0), _row(0.26, 42.0, 40.0)],
            "dmd": [_row(0.25, 40.0, 20.0), _row(0.21, 41.0, 80.0)],
            "dmdr": [_row(0.20, 43.0, 100.0), _row(0.16, 44.0, 400.0)],
        }
    )
    md = tmp_path / "benchmarks.md"
    md.write_text(
        "<!-- t-paired:begin -->\nold\n<!-- t-paired:end -->\n"
        "<!-- t-paired-dmdr:begin -->\nold\n<!-- t-paired-dmdr:end -->\n"
    )
    original = toy.update_benchmarks_md
    monkeypatch.setattr(
        toy, "update_benchmarks_md", lambda table, marker: original(table, md, marker)
    )
    monkeypatch.setattr(toy, "plot_curves", lambda data, path: False)
    text = toy.write_docs(data, tmp_path, "t", ("dmd", "dmdr"))
    written = md.read_text()
    assert "old" not in written
    assert "| gdmd | 2 | +0.050 [+0.050, +0.050] | +1.00 [+1.00, +1.00] |" in written
    assert "| gdmd | 2 | +0.100 [+0.100, +0.100] | -2.00 [-2.00, -2.00] |" in written
    assert "accuracy - dmdr" in written and "accuracy - dmd |" in written
    assert (tmp_path / "t.md").read_text() == text
    assert (tmp_path / "t.json").exists()


def test_diagnostics_run_end_to_end_on_a_finished_run(gdmd_pm, tmp_path: Path) -> None:
    """On random tiny models (nothing trained): every row, finite statistics, JSON-able."""
    import json

    import torch
    from typer.testing import CliRunner

    from gdmd.cli import make_app
    from gdmd.models.tiny import TinyDiffusionModel, TinyUNetConfig
    from gdmd.toy.alignment import AlignmentArchitecture, AlignmentModel

    torch.manual_seed(0)
    TinyDiffusionModel(TinyUNetConfig(channels=(8, 16))).save_pretrained(tmp_path / "teacher")
    tiny = AlignmentArchitecture(embed_dim=8, image_widths=(4, 4, 4), text_width=8, text_heads=1)
    AlignmentModel(tiny).save_pretrained(tmp_path / "reward")
    recipe = BENCHMARKS.parent / "recipes" / "toy" / "gdmd.toml"
    overrides = [
        f"run.output_dir={tmp_path}",
        f"teacher.path={tmp_path / 'teacher'}",
        "teacher.channels=[8, 16]",
        f"reward.alignment.path={tmp_path / 'reward'}",
        "train.steps=1",
        "train.batch_size=2",
        "train.critic_steps=1",
    ]
    args = ["run", str(recipe), *[a for o in overrides for a in ("--set", o)]]
    result = CliRunner().invoke(make_app(gdmd_pm), args)
    assert result.exit_code == 0, result.output

    found = diagnostics.diagnose(tmp_path / "toy-gdmd", samples=4, k=3, seed=1, split="validation")
    rows = {(row["layout"], row["scored"]): row for row in found["rows"]}
    assert len(rows) == 1 + 3 * 3
    assert math.isnan(rows[("shared", "x - g")]["r2_t"])  # one time per group: nothing to explain
    assert 0.0 <= rows[("independent", "x - g")]["r2_t"] <= 1.0
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in rows.values())
    assert set(found["scale"]) == {"independent", "shared", "stratified"}
    json.dumps(found)
    assert "| stratified | x - (x0_fake - x0_real) |" in diagnostics.markdown(found)
