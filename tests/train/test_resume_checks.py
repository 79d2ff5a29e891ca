"""A resume is refused, with the reason, when the recipe changed or a checkpoint is damaged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.errors import CheckpointError
from gdmd.run.rundir import recipe_differences
from gdmd.train.checkpoint import load_checkpoint, save_checkpoint


def _save(root: Path) -> Path:
    return save_checkpoint(
        root,
        3,
        {"student": {"w": torch.arange(64.0)}},
        {"optim": {"state": {0: {"exp_avg": torch.ones(8)}}, "lr": 0.1}, "counters": {"step": 3}},
        keep=1,
    )


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: _flip_last_byte(p / "student.safetensors"),
            "student.safetensors does not match",
        ),
        (lambda p: _truncate(p / "optim.safetensors"), "optim.safetensors does not match"),
        (lambda p: (p / "counters.json").unlink(), "counters.json is missing"),
        (lambda p: (p / "stray.bin").write_bytes(b"x"), "files its save did not write: stray.bin"),
        (lambda p: (p / "COMPLETE").write_text("{not json"), "COMPLETE is unreadable"),
    ],
    ids=["corrupted", "truncated", "missing", "extra", "bad-marker"],
)
def test_a_damaged_checkpoint_is_named_not_loaded(tmp_path: Path, damage, message: str) -> None:
    path = _save(tmp_path)
    load_checkpoint(path)  # whole before the damage
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_an_unreadable_file_of_an_unlisted_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    # A marker without a file list (an older save) still gets a clear error, not a traceback.
    path = _save(tmp_path)
    (path / "COMPLETE").write_text(json.dumps({"step": 3}))
    _truncate(path / "student.safetensors")
    with pytest.raises(CheckpointError, match="cannot read student.safetensors"):
        load_checkpoint(path)


def test_recipe_differences_name_every_dotted_key() -> None:
    saved = "[train]\nsteps = 4\nlr = 0.1\n[reward.a]\nweight = 1.0\n"
    current = "[train]\nsteps = 8\nlr = 0.1\n[reward.a]\nweight = 2.0\n[reward.b]\nweight = 1.0\n"
    assert recipe_differences(saved, current) == [
        "reward.a.weight",
        "reward.b.weight",
        "train.steps",
    ]


def run_cli(pm, *args: str):
    return CliRunner().invoke(make_app(pm), list(args))


def test_resume_with_another_recipe_is_refused_naming_the_keys(
    gdmd_pm, write_recipe: Callable[..., Path]
) -> None:
    recipe_path = write_recipe()
    first = run_cli(gdmd_pm, "run", str(recipe_path), "--set", "train.steps=1")
    assert first.exit_code == 0, first.output
    run_dir = recipe_path.parent / "runs" / "tiny"
    resolved = (run_dir / "resolved.toml").read_text()

    changed = run_cli(
        gdmd_pm, "run", str(recipe_path), "--resume", "auto",
        "--set", "train.critic_lr=0.5", "--set", "target.k=3", "--set", "train.steps=2",
    )  # fmt: skip
    assert changed.exit_code == 2, changed.output
    text = " ".join(changed.output.split())
    assert "the recipe differs from its resolved.toml in 2 key(s)" in text
    assert "target.k: run has 2, now 3" in text
    assert "train.critic_lr: run has 0.001, now 0.5" in text
    assert "train.steps" not in text.split("resume):")[1]  # extending a run is allowed
    assert (run_dir / "resolved.toml").read_text() == resolved  # not rewritten

    # The same recipe, continued for more steps, resumes.
    more = run_cli(gdmd_pm, "run", str(recipe_path), "--resume", "auto", "--set", "train.steps=2")
    assert more.exit_code == 0, more.output
    assert "steps = 2" in (run_dir / "resolved.toml").read_text()


def test_resume_from_a_damaged_checkpoint_exits_2_naming_the_file(
    gdmd_pm, write_recipe: Callable[..., Path]
) -> None:
    recipe_path = write_recipe()
    assert run_cli(gdmd_pm, "run", str(recipe_path), "--set", "train.steps=1").exit_code == 0
    checkpoint = recipe_path.parent / "runs" / "tiny" / "checkpoints" / "step-0000001"
    _flip_last_byte(checkpoint / "critic.safetensors")
    result = run_cli(gdmd_pm, "run", str(recipe_path), "--resume", "auto", "--set", "train.steps=2")
    assert result.exit_code == 2, result.output
    assert "critic.safetensors does not match the checksum" in " ".join(result.output.split())
    assert "Traceback" not in result.output
