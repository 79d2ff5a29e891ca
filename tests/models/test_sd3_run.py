"""The ``sd3`` family through the real loop (``gdmd run``) on the tiny pipeline: exact resume,
and the shared-base layout trains exactly as the copied one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.train.checkpoint import load_checkpoint

from .conftest import T5_TOKENS

pytest.importorskip("diffusers")
pytest.importorskip("peft")


def sd3_recipe(out: Path, pipeline: Path, name: str, share: bool, steps: int = 2) -> str:
    model = f'kind = "sd3"\nmax_sequence_length = {T5_TOKENS}'
    return f"""
[run]
name = "{name}"
seed = 3
output_dir = "{out}"

[teacher]
{model}
model = "{pipeline}"
guidance_scale = 2.0

[student]
{model}
init_from = "teacher"
steps = 2
timesteps = [1.0, 0.5]
lora_rank = 4
lora_alpha = 8.0
share_base = {str(share).lower()}

[critic]
{model}
init_from = "teacher"
lora_rank = 2
share_base = {str(share).lower()}

[reward.red]
kind = "channel"
channel = "red"

[target]
kind = "gdmd"
k = 2
vary = "fake"

[prompts]
kind = "list"
prompts = ["a red cat", "two blue dogs", "a cat"]

[train]
steps = {steps}
batch_size = 2
critic_steps = 1
student_lr = 1e-2
critic_lr = 1e-2
checkpoint_every = 1

[log]
trackers = ["jsonl"]
"""


@pytest.fixture
def run_sd3(
    gdmd_pm, tmp_path: Path, sd3_pipeline_dir: Path
) -> Callable[..., tuple[int, str, Path]]:
    def run(name: str, share: bool, steps: int, *args: str) -> tuple[int, str, Path]:
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(sd3_recipe(tmp_path / "runs", sd3_pipeline_dir, name, share, steps))
        result = CliRunner().invoke(make_app(gdmd_pm), ["run", str(recipe), *args])
        return result.exit_code, result.output, tmp_path / "runs" / name

    return run


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_shared_base_trains_exactly_as_copies_and_resumes_exactly(run_sd3) -> None:
    code, output, shared = run_sd3("shared", True, 2)
    assert code == 0, output
    code, output, copied = run_sd3("copied", False, 1)
    assert code == 0, output
    start, _ = load_checkpoint(shared / "checkpoints" / "step-0000001")
    first, _ = load_checkpoint(shared / "checkpoints" / "step-0000002")
    for role in ("student", "critic"):
        _same(start[role], load_checkpoint(copied / "checkpoints" / "step-0000001")[0][role])
        # Every adapter weight trained.
        moved = {k for k in first[role] if not torch.equal(first[role][k], start[role][k])}
        assert moved == set(first[role]) != set(), role

    code, output, split = run_sd3("split", True, 1)
    assert code == 0, output
    code, output, split = run_sd3("split", True, 2, "--resume", "auto")
    assert code == 0, output
    resumed, _ = load_checkpoint(split / "checkpoints" / "step-0000002")
    for role in ("student", "critic"):
        _same(first[role], resumed[role])
