"""The teacher's CFG jitter (DMDR): one scale per student update, drawn from (seed, step)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gdmd.recipe import load_recipe
from gdmd.run.build import build_components, loop_settings, make_accelerator
from gdmd.train.checkpoint import load_checkpoint
from gdmd.train.loop import teacher_guidance_scale, train
from tests.train.test_loop import _assert_same


def _built(gdmd_pm, write_recipe, name: str, steps: int, jitter: float):  # type: ignore[no-untyped-def]
    recipe = load_recipe(write_recipe(f"{name}.toml", name=name), gdmd_pm)
    run_dir = Path(recipe.run.output_dir) / recipe.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(recipe, run_dir)
    parts = build_components(recipe, accelerator)
    settings = loop_settings(recipe, parts.teacher.schedule)
    settings = dataclasses.replace(
        settings,
        train=settings.train.model_copy(update={"steps": steps}),
        guidance_jitter=jitter,
    )
    return parts, settings, accelerator, run_dir


def _recorded_scales(teacher: torch.nn.Module) -> list[float]:
    """Every guidance scale the teacher is called with, in order."""
    seen: list[float] = []

    def hook(module, args, kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["guidance_scale"])

    teacher.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_the_scale_lies_in_the_range_differs_across_steps_and_repeats_per_step(
    gdmd_pm, write_recipe
) -> None:
    _, settings, _, _ = _built(gdmd_pm, write_recipe, "draws", 3, 0.5)
    scales = [teacher_guidance_scale(settings, step) for step in range(50)]
    assert all(1.5 <= s < 2.5 for s in scales), scales
    assert len(set(scales)) == 50
    assert min(scales) < 1.75 and max(scales) > 2.25  # spread over the range, not a corner
    again = dataclasses.replace(settings)
    assert [teacher_guidance_scale(again, step) for step in range(50)] == scales
    other_seed = dataclasses.replace(settings, seed=settings.seed + 1)
    assert teacher_guidance_scale(other_seed, 0) != scales[0]
    still = dataclasses.replace(settings, guidance_jitter=0.0)
    assert [teacher_guidance_scale(still, step) for step in range(5)] == [2.0] * 5


def test_every_teacher_call_of_an_update_uses_its_scale_and_logs_it(
    gdmd_pm, write_recipe
) -> None:
    parts, settings, accelerator, run_dir = _built(gdmd_pm, write_recipe, "calls", 3, 0.5)
    seen = _recorded_scales(parts.teacher)
    result = train(parts, settings, accelerator, run_dir)
    expected = [teacher_guidance_scale(settings, step) for step in range(3)]
    assert [m["teacher/guidance_scale"] for m in result.metrics] == pytest.approx(expected)
    # The critic updates never call the teacher: every call is a student update's.
    assert seen and len(seen) % 3 == 0
    per_step = len(seen) // 3
    for step in range(3):
        assert seen[step * per_step : (step + 1) * per_step] == [expected[step]] * per_step


def test_without_jitter_the_teacher_guides_with_the_recipe_scale_and_logs_nothing(
    gdmd_pm, write_recipe
) -> None:
    parts, settings, accelerator, run_dir = _built(gdmd_pm, write_recipe, "plain", 2, 0.0)
    seen = _recorded_scales(parts.teacher)
    result = train(parts, settings, accelerator, run_dir)
    assert seen and set(seen) == {2.0}
    assert all("teacher/guidance_scale" not in m for m in result.metrics)


def test_resume_with_jitter_is_exact(gdmd_pm, write_recipe) -> None:
    straight = _built(gdmd_pm, write_recipe, "straight", 4, 0.5)
    train(*straight)
    first = _built(gdmd_pm, write_recipe, "split", 2, 0.5)
    train(*first)
    second = _built(gdmd_pm, write_recipe, "split", 4, 0.5)
    resumed = train(*second, resume_from=second[3] / "checkpoints" / "step-0000002")
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    a_tensors, a_states = load_checkpoint(straight[3] / "checkpoints" / "step-0000004")
    b_tensors, b_states = load_checkpoint(second[3] / "checkpoints" / "step-0000004")
    _assert_same(a_tensors, b_tensors, "tensors")
    _assert_same(a_states, b_states, "states")



def test_the_recipe_key_reaches_the_loop_and_the_resolved_recipe(gdmd_pm, write_recipe) -> None:
    path = write_recipe()
    text = path.read_text()
    jitter = "guidance_scale = 2.0\nguidance_jitter = 0.25\n"
    path.write_text(text.replace("guidance_scale = 2.0\n", jitter))
    recipe = load_recipe(path, gdmd_pm)
    schedule = build_components(recipe).teacher.schedule
    assert loop_settings(recipe, schedule).guidance_jitter == 0.25
    assert "guidance_jitter = 0.25" in recipe.to_toml()
    # Without the key, resolved recipes are written as before.
    assert "guidance_jitter" not in load_recipe(write_recipe("plain.toml"), gdmd_pm).to_toml()
