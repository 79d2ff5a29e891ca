"""The demo end to end at test size: the shipped GDMD recipe, a small teacher, a short run.

``recipes/toy/gdmd.toml`` through ``gdmd run`` with overrides that shrink it: a small
teacher trained here (first use, into the test's cache) on the single-object prompts only, a
briefly trained alignment reward, 40 student updates. The student must end above where it
started: its accuracy at step 0 (the teacher's weights, sampled with the student's 4-step
sampler and no guidance) measured by the exact checker on the same prompts and seeds.

Measured when written (1 torch thread): step 0 0.44, after 40 updates 0.65, teacher with 50
Euler steps and CFG 0.70, on the 120 images below. About 5 CPU minutes, most of them the
teacher's training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.eval.harness import generate
from gdmd.run.rundir import RunDir
from gdmd.toy.checker import check_batch
from gdmd.toy.grammar import training_prompts

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "toy" / "gdmd.toml"

TEST_SIZE = [
    "teacher.channels=[16, 32, 32]",
    "teacher.train_steps=1500",
    "teacher.lr=2e-3",
    'teacher.categories=["single"]',
    'prompts.categories=["single"]',
    "reward.alignment.train_steps=150",
    "train.steps=40",
    "train.batch_size=8",
    "train.critic_steps=2",
    "train.checkpoint_every=20",
    "train.sample_every=20",
]


def _accuracy(run, prompts: list[str]) -> float:
    images = generate(run, prompts, list(range(len(prompts))))
    verdicts = check_batch(images, prompts)
    return sum(verdicts) / len(verdicts)


def test_demo_recipe_lifts_student_accuracy_above_step_zero(gdmd_pm, tmp_path) -> None:
    overrides = [f"run.output_dir={tmp_path}", *TEST_SIZE]
    args = ["run", str(RECIPE), *[a for o in overrides for a in ("--set", o)]]
    result = CliRunner().invoke(make_app(gdmd_pm), args)
    assert result.exit_code == 0, result.output

    run_dir = tmp_path / "toy-gdmd"
    assert (run_dir / "student" / "model.safetensors").is_file()
    assert (run_dir / "samples" / "step-0000040.png").is_file()
    run = RunDir.existing(run_dir).open(gdmd_pm, device="cpu")
    assert run.step == 40

    # The nine single-object training prompts the run trained on, 120 images.
    prompts = training_prompts(categories=["single"])
    assert len(prompts) == 9 and set(run.prompts.sample(50, torch.Generator())) <= set(prompts)
    prompts = (prompts * 14)[:120]
    at_start = _accuracy(dataclasses.replace(run, student=run.teacher), prompts)
    at_end = _accuracy(run, prompts)
    assert at_end >= at_start + 0.08, (at_start, at_end)
