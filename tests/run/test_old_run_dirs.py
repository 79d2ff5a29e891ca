"""Run directories written by an earlier gdmd still open, sample and resume.

``tests/fixtures/old-run-dirs/made-by-0.1`` was written by gdmd 0.1.0 before the run
directory moved to :mod:`gdmd.run` (commit bd5c096: ``gdmd run recipes/tiny_cpu.toml`` for 2
updates, 8 px, channels 8/8, EMA 0.9, checkpoint at step 2). Its resolved recipe lacks keys
that were added since (``[target] group``), as any older run's does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.manager import build_plugin_manager
from gdmd.run.rundir import RunDir

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "old-run-dirs" / "made-by-0.1"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    copy = tmp_path / "runs" / OLD_RUN.name
    shutil.copytree(OLD_RUN, copy)
    return copy


def test_an_old_run_opens_with_its_trained_student(old_run: Path) -> None:
    opened = RunDir.existing(old_run).open(build_plugin_manager(load_entrypoints=False))
    assert opened.step == 2
    ema = load_file(old_run / "checkpoints" / "step-0000002" / "ema.safetensors")
    student = opened.student.state_dict()  # type: ignore[attr-defined]
    assert ema and all(torch.equal(student[k], v) for k, v in ema.items())
    assert opened.student_timesteps == json.loads((old_run / "run.json").read_text())[
        "student_timesteps"
    ]


def test_an_old_run_samples(old_run: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "samples"
    result = CliRunner().invoke(
        make_app(build_plugin_manager(load_entrypoints=False)),
        ["sample", str(old_run), "--prompts-file", str(prompts), "--out", str(out),
         "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]


def _resume(old_run: Path, *overrides: str) -> object:
    return CliRunner().invoke(
        make_app(build_plugin_manager(load_entrypoints=False)),
        ["run", str(old_run / "resolved.toml"), "--resume", "auto",
         "--set", f"run.output_dir={old_run.parent}", *[f"--set={o}" for o in overrides]],
    )


def test_an_old_run_resumes_from_its_checkpoint(old_run: Path) -> None:
    # A key added since (with its default) is not a difference; the old checkpoint loads.
    result = _resume(old_run, "train.steps=3")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert (old_run / "checkpoints" / "step-0000003" / "COMPLETE").is_file()
    lines = (old_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_an_old_run_still_refuses_a_changed_recipe(old_run: Path) -> None:
    result = _resume(old_run, "train.steps=3", "train.student_lr=0.5")
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "train.student_lr: run has" in result.output  # type: ignore[attr-defined]
