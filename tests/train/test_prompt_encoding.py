"""Each prompt batch of a student update goes through the text encoder exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from gdmd.errors import ContractError
from gdmd.recipe import load_recipe
from gdmd.run.build import build_components, loop_settings, make_accelerator
from gdmd.train.loop import train


class EncoderCalls:
    """Wraps a model's ``encode_prompts`` and records every call's prompts, and the step."""

    def __init__(self, model: object) -> None:
        self.calls: list[list[str]] = []
        self.encode = model.encode_prompts  # type: ignore[attr-defined]
        model.encode_prompts = self  # type: ignore[attr-defined]

    def __call__(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        self.calls.append(list(prompts))
        return self.encode(prompts)


def _built(gdmd_pm, write_recipe, **recipe: str):  # type: ignore[no-untyped-def]
    recipe_path: Path = write_recipe(**recipe)
    loaded = load_recipe(recipe_path, gdmd_pm, overrides=["train.checkpoint_every=0"])
    run_dir = recipe_path.parent / "runs" / loaded.run.name
    run_dir.mkdir(parents=True)
    accelerator = make_accelerator(loaded, run_dir)
    parts = build_components(loaded, accelerator)
    return loaded, parts, loop_settings(loaded, parts.teacher.schedule), accelerator, run_dir


@pytest.mark.parametrize("accumulation", [1, 2])
def test_every_prompt_batch_is_encoded_once_per_update(
    gdmd_pm, write_recipe, accumulation: int
) -> None:
    # gdmd with vary = "both": teacher, current critic and critic snapshots all get the
    # conditioning; none of them may encode the prompts again.
    recipe, parts, settings, accelerator, run_dir = _built(
        gdmd_pm, write_recipe, target='kind = "gdmd"\nk = 2\nvary = "both"'
    )
    settings.gradient_accumulation_steps = accumulation
    tr = recipe.train
    assert (tr.steps, tr.critic_steps, tr.batch_size) == (3, 2, 2)
    roles = ("teacher", "student", "critic")
    counted = {role: EncoderCalls(getattr(parts, role)) for role in roles}
    drawn: list[str] = []
    sample = parts.prompts.sample

    def recording_sample(n: int, generator: torch.Generator) -> list[str]:
        prompts = sample(n, generator)
        drawn.extend(prompts)
        return prompts

    parts.prompts.sample = recording_sample  # type: ignore[method-assign]

    train(parts, settings, accelerator, run_dir)

    batches_per_update = (tr.critic_steps + 1) * accumulation  # critic updates, then student
    calls = counted["student"].calls
    assert len(calls) == tr.steps  # one encoder call per update ...
    assert [len(c) for c in calls] == [batches_per_update * tr.batch_size] * tr.steps
    # ... holding every prompt drawn in that update, each once, in the order drawn.
    assert [p for c in calls for p in c] == drawn
    assert counted["teacher"].calls == counted["critic"].calls == []


def test_a_target_without_critic_snapshots_is_refused(gdmd_pm, write_recipe) -> None:
    _, parts, settings, accelerator, run_dir = _built(gdmd_pm, write_recipe, target='kind = "dmd"')

    class Legacy:
        needs_rewards = False
        needs_differentiable_reward = False

        def __call__(self, ctx):  # type: ignore[no-untyped-def]
            raise AssertionError("never called")

    parts.target = Legacy()  # type: ignore[assignment]
    with pytest.raises(ContractError, match="critic_snapshots \\(0 when it uses only the current"):
        train(parts, settings, accelerator, run_dir)
    assert not (run_dir / "metrics.jsonl").exists()
