"""The distillation loop end to end on CPU, through the CLI, and its reliability rules."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import gdmd
from gdmd.cli import make_app
from gdmd.recipe import load_recipe
from gdmd.run.build import build_components
from gdmd.train.checkpoint import complete_checkpoints, load_checkpoint


def run_cli(pm, *args: str):
    result = CliRunner().invoke(make_app(pm), list(args))
    return result


def test_gdmd_run_end_to_end(gdmd_pm, write_recipe: Callable[..., Path]) -> None:
    recipe_path = write_recipe(train="sample_every = 3")
    result = run_cli(gdmd_pm, "run", str(recipe_path))
    assert result.exit_code == 0, result.output
    run_dir = recipe_path.parent / "runs" / "tiny"
    for name in ("resolved.toml", "plugins.lock", "metrics.jsonl", "run.json"):
        assert (run_dir / name).is_file(), name
    assert "tiny-unet" in (run_dir / "resolved.toml").read_text()
    assert "gdmd==" in (run_dir / "plugins.lock").read_text()
    assert (run_dir / "samples" / "step-0000003.png").is_file()
    assert (run_dir / "student" / "model.safetensors").is_file()
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        for key in ("student/loss", "critic/loss", "reward/red", "gdmd/weight_max"):
            assert math.isfinite(line[key]), key
    assert [step for step, _ in complete_checkpoints(run_dir / "checkpoints")] == [1, 2, 3]

    # Every trainable parameter of student and critic moved away from the teacher's weights,
    # and the teacher itself never entered a checkpoint.
    recipe = load_recipe(recipe_path, gdmd_pm)
    teacher = build_components(recipe).teacher.state_dict()
    tensors, states = load_checkpoint(run_dir / "checkpoints" / "step-0000003")
    for role in ("student", "critic"):
        assert set(tensors[role]) <= set(teacher) and len(tensors[role]) > 10
        unchanged = [n for n, t in tensors[role].items() if torch.equal(t, teacher[n])]
        assert unchanged == [], f"{role} parameters that never changed: {unchanged}"
    assert "teacher" not in tensors
    assert states["counters"] == {"step": 3}
    final = load_file(str(run_dir / "student" / "model.safetensors"))
    assert all(torch.equal(final[n], t) for n, t in tensors["student"].items())


@pytest.mark.parametrize(
    "target",
    [
        'kind = "dmd"',
        'kind = "gdmd"\nk = 3\nvary = "fake"',
        'kind = "gdmd"\nk = 2\nvary = "both"',
        'kind = "dmdr"',
        'kind = "reward-weighted"',
    ],
)
def test_every_target_strategy_trains(gdmd_pm, write_recipe, target: str) -> None:
    recipe_path = write_recipe(target=target)
    result = run_cli(gdmd_pm, "run", str(recipe_path), "--set", "train.steps=2")
    assert result.exit_code == 0, result.output
    lines = (recipe_path.parent / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert all(math.isfinite(json.loads(line)["student/loss"]) for line in lines)


def _checkpoint_state(path: Path) -> tuple[dict, dict]:
    return load_checkpoint(path)


def _assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_is_exact(gdmd_pm, write_recipe) -> None:
    four = ("--set", "train.steps=4")
    straight = write_recipe("straight.toml", name="straight", train="ema_decay = 0.9")
    assert run_cli(gdmd_pm, "run", str(straight), *four).exit_code == 0

    split = write_recipe("split.toml", name="split", train="ema_decay = 0.9")
    first = run_cli(gdmd_pm, "run", str(split), "--set", "train.steps=2")
    assert first.exit_code == 0, first.output
    # Running again without --resume would overwrite the run: refused.
    again = run_cli(gdmd_pm, "run", str(split), *four)
    assert again.exit_code == 2 and "--resume auto" in again.output
    second = run_cli(gdmd_pm, "run", str(split), *four, "--resume", "auto")
    assert second.exit_code == 0, second.output
    assert "resuming" in second.output

    runs = split.parent / "runs"
    a_tensors, a_states = _checkpoint_state(runs / "straight" / "checkpoints" / "step-0000004")
    b_tensors, b_states = _checkpoint_state(runs / "split" / "checkpoints" / "step-0000004")
    _assert_same(a_tensors, b_tensors, "tensors")  # student, critic, EMA: bitwise
    _assert_same(a_states, b_states, "states")  # optimizers, schedulers, RNG, counters
    metrics = {
        name: [json.loads(x) for x in (runs / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("straight", "split")
    }
    assert [m["step"] for m in metrics["split"]] == [1, 2, 3, 4]
    drop = {"step_time"}
    strip = [{k: v for k, v in m.items() if k not in drop} for m in metrics["straight"]]
    assert strip == [{k: v for k, v in m.items() if k not in drop} for m in metrics["split"]]


class NaNAtStep:
    """A reward plugin whose scores turn NaN from a given step on."""

    def __init__(self, bad_call: int) -> None:
        self.calls = 0
        self.bad_call = bad_call

    @gdmd.hookimpl
    def gdmd_register_rewards(self, register) -> None:
        plugin = self

        class Reward:
            differentiable = False

            def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
                plugin.calls += 1
                value = float("nan") if plugin.calls >= plugin.bad_call else 0.0
                return torch.full((images.shape[0],), value) + images.mean(dim=(1, 2, 3))

        register("flaky", lambda config, ctx: Reward(), summary="NaN after a while")


def test_nan_reward_stops_with_contract_error_and_keeps_last_checkpoint(
    gdmd_pm, write_recipe
) -> None:
    gdmd_pm.register(NaNAtStep(bad_call=3), name="flaky-plugin")
    recipe_path = write_recipe(rewards='[reward.flaky]\nkind = "flaky"')
    result = run_cli(gdmd_pm, "run", str(recipe_path), "--set", "train.steps=5")
    assert result.exit_code == 1
    assert "reward 'flaky' (plugin 'flaky-plugin') returned 4 non-finite score(s)" in result.output
    root = recipe_path.parent / "runs" / "tiny" / "checkpoints"
    assert [s for s, _ in complete_checkpoints(root)] == [1, 2]
    load_checkpoint(root / "step-0000002")  # intact


class InfWeights:
    @gdmd.hookimpl
    def gdmd_register_targets(self, register) -> None:
        from gdmd.targets.dmd import DMDTarget

        class Broken(DMDTarget):
            def __call__(self, ctx):
                out = super().__call__(ctx)
                if ctx.step >= 1:
                    out.weights = out.weights * float("inf")
                return out

        register("broken", lambda config, ctx: Broken(), summary="inf weights from step 1")


def test_non_finite_weights_stop_before_the_optimizer_step(gdmd_pm, write_recipe) -> None:
    gdmd_pm.register(InfWeights(), name="broken-target")
    recipe_path = write_recipe(target='kind = "broken"')
    result = run_cli(gdmd_pm, "run", str(recipe_path), "--set", "train.steps=4")
    assert result.exit_code == 3, result.output
    assert "target weights is not finite at step 1" in result.output
    root = recipe_path.parent / "runs" / "tiny" / "checkpoints"
    assert [s for s, _ in complete_checkpoints(root)] == [1]


class NotDifferentiable:
    @gdmd.hookimpl
    def gdmd_register_rewards(self, register) -> None:
        class Reward:
            differentiable = False

            def __call__(self, images, prompts):
                return images.mean(dim=(1, 2, 3))

        register("opaque", lambda config, ctx: Reward(), summary="not differentiable")


def test_dmdr_refuses_a_non_differentiable_reward(gdmd_pm, write_recipe) -> None:
    gdmd_pm.register(NotDifferentiable(), name="opaque-plugin")
    recipe_path = write_recipe(target='kind = "dmdr"', rewards='[reward.o]\nkind = "opaque"')
    result = run_cli(gdmd_pm, "run", str(recipe_path))
    assert result.exit_code == 2
    assert "[reward.o] kind: target 'dmdr' back-propagates through its rewards" in result.output
    assert "reward 'opaque' is not differentiable" in result.output


def test_dry_run_builds_without_writing(gdmd_pm, write_recipe) -> None:
    recipe_path = write_recipe()
    result = run_cli(gdmd_pm, "run", str(recipe_path), "--dry-run")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "student timesteps [1.0, 0.5]" in text
    assert "6 student samples per update" in text
    assert not (recipe_path.parent / "runs").exists()
