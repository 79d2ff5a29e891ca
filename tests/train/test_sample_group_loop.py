"""The loop's side of GDMD's group of samples: prompts repeated in the student batch, the
batch checked against the group size, and the random stream of every other recipe kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gdmd.errors import ContractError
from gdmd.interfaces import TargetContext, TargetOutput
from gdmd.prompts.source import PromptList
from gdmd.recipe import load_recipe
from gdmd.run.build import build_components, loop_settings, make_accelerator
from gdmd.train.loop import train
from gdmd.train.randomness import SiteDraws
from tests.train.test_loop import run_cli

SAMPLES = 'kind = "gdmd"\nk = 2\ngroup = "samples"'


def _write(write_recipe, target: str, batch_size: int = 2) -> Path:
    path = write_recipe(target=target)
    text = path.read_text()
    assert "batch_size = 2\n" in text
    path.write_text(text.replace("batch_size = 2\n", f"batch_size = {batch_size}\n"))
    return path


def _built(gdmd_pm, write_recipe, target: str, batch_size: int = 2):
    path = _write(write_recipe, target, batch_size)
    recipe = load_recipe(path, gdmd_pm)
    run_dir = Path(recipe.run.output_dir) / recipe.run.name
    run_dir.mkdir(parents=True)
    accelerator = make_accelerator(recipe, run_dir)
    parts = build_components(recipe, accelerator)
    return parts, loop_settings(recipe, parts.teacher.schedule), accelerator, run_dir


class Recording:
    """Wraps a target strategy and records the prompts of every student batch it sees."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.needs_rewards = inner.needs_rewards
        self.needs_differentiable_reward = inner.needs_differentiable_reward
        self.critic_snapshots = inner.critic_snapshots
        self.prompt_repeats = inner.prompt_repeats
        self.prompts: list[list[str]] = []

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        self.prompts.append(list(ctx.prompts))
        return self.inner(ctx)


def test_the_student_batch_holds_each_prompt_k_times_in_a_row(gdmd_pm, write_recipe) -> None:
    parts, settings, accelerator, run_dir = _built(gdmd_pm, write_recipe, SAMPLES, 4)
    recording = Recording(parts.target)
    parts.target = recording  # type: ignore[assignment]
    result = train(parts, settings, accelerator, run_dir)
    assert len(recording.prompts) == settings.train.steps
    for step, prompts in enumerate(recording.prompts):
        assert prompts[0] == prompts[1] and prompts[2] == prompts[3], prompts
        # The group's prompt is the one its first row draws without repeats.
        site = SiteDraws(settings.seed, step, ("student", 0), range(4), torch.device("cpu"))
        drawn = site.prompts(parts.prompts)
        assert prompts == [drawn[0], drawn[0], drawn[2], drawn[2]]
    for line in result.metrics:
        assert math.isfinite(line["student/loss"]) and 0.0 <= line["gdmd/weight_min"] <= 1.0


def test_repeated_prompts_leave_the_rest_of_each_samples_stream_alone() -> None:
    source = PromptList(["a", "b", "c", "d", "e"])
    draws = [SiteDraws(3, 5, ("student", 0), range(4), torch.device("cpu")) for _ in range(2)]
    plain, repeated = draws[0].prompts(source), draws[1].prompts(source, repeats=2)
    assert repeated == [plain[0], plain[0], plain[2], plain[2]]
    assert torch.equal(draws[0].noise((2, 3)), draws[1].noise((2, 3)))


def test_a_batch_that_is_not_a_multiple_of_k_is_a_recipe_error(gdmd_pm, write_recipe) -> None:
    path = _write(write_recipe, SAMPLES, 3)
    result = run_cli(gdmd_pm, "run", str(path))
    assert result.exit_code == 2, result.output
    assert "[train] batch_size: 3 is not a multiple of 2" in result.output
    assert 'group = "samples"' in result.output and "Traceback" not in result.output
    assert not (path.parent / "runs" / "tiny" / "metrics.jsonl").exists()


def test_a_sample_group_run_trains_end_to_end(gdmd_pm, write_recipe) -> None:
    path = _write(write_recipe, SAMPLES + '\ngroup_t = "shared"', 4)
    result = run_cli(gdmd_pm, "run", str(path), "--set", "train.steps=2")
    assert result.exit_code == 0, result.output
    lines = (path.parent / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["gdmd/reward_active"] == 1.0 for m in metrics)


def test_a_target_with_a_bad_prompt_repeats_is_refused(gdmd_pm, write_recipe) -> None:
    parts, settings, accelerator, run_dir = _built(gdmd_pm, write_recipe, 'kind = "dmd"')
    parts.target.prompt_repeats = 0  # type: ignore[attr-defined]
    with pytest.raises(ContractError, match="has prompt_repeats = 0, expected a positive int"):
        train(parts, settings, accelerator, run_dir)


#: ``(student/loss, critic/loss)`` of the conftest's tiny recipe, steps 1-3, computed by the
#: code before the group of samples existed (commit eab490a). A change to any random draw
#: moves these by far more than the tolerance, which only absorbs float rounding that
#: differs between CPUs and thread counts; on the machine they came from they match exactly.
BEFORE = {
    'kind = "gdmd"\nk = 2': [
        (0.0014166207984089851, 1.4572889804840088),
        (0.00410260958597064, 1.8010132312774658),
        (0.004924119915813208, 1.8039249181747437),
    ],
    'kind = "gdmd"\nk = 3\nvary = "fake"': [
        (0.0014559562550857663, 1.4572889804840088),
        (0.0026762662455439568, 1.8024142384529114),
        (0.006762043107300997, 1.8002849817276),
    ],
    'kind = "dmd"': [
        (0.0018567716469988227, 1.4572889804840088),
        (0.003199717029929161, 1.8024117350578308),
        (0.006477517541497946, 1.8013781309127808),
    ],
}


@pytest.mark.parametrize("target", list(BEFORE), ids=["gdmd", "gdmd-fake", "dmd"])
def test_group_targets_recipes_train_as_before(gdmd_pm, write_recipe, target: str) -> None:
    parts, settings, accelerator, run_dir = _built(gdmd_pm, write_recipe, target)
    result = train(parts, settings, accelerator, run_dir)
    losses = [v for m in result.metrics for v in (m["student/loss"], m["critic/loss"])]
    assert losses == pytest.approx([v for pair in BEFORE[target] for v in pair], rel=1e-5)
