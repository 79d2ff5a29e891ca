"""GDMD's group of samples (``group = "samples"``): K samples of one prompt, one DMD target
each, advantages per prompt; on hand-built values and analytic stand-in models."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch
from pydantic import ValidationError

from gdmd.interfaces import TargetStrategy, WeightedReward
from gdmd.targets.common import dmd_targets, sample_group
from gdmd.targets.configs import GDMDConfig
from gdmd.targets.gdmd import GDMDTarget
from gdmd.testing import assert_target_contract
from tests.core.test_targets import SHAPE, PixelDecoder, make_ctx


class FixedReward:
    """Returns the given scores, one per row; records the prompts it was given."""

    differentiable = False

    def __init__(self, scores: list[float]) -> None:
        self.scores = torch.tensor(scores)
        self.prompts: list[list[str]] = []

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.prompts.append(list(prompts))
        assert images.shape[0] == len(self.scores)
        return self.scores.clone()


def grouped_ctx(x: torch.Tensor, k: int, rewards: list[WeightedReward], seed: int = 0):
    """A context whose prompts come in groups of ``k`` consecutive rows, as the loop lays
    them out for ``prompt_repeats = k``."""
    ctx = make_ctx(x, rewards, seed=seed)
    return dataclasses.replace(ctx, prompts=[f"prompt {i // k}" for i in range(x.shape[0])])


def test_the_sample_group_asks_the_loop_for_repeated_prompts() -> None:
    samples = GDMDTarget(GDMDConfig(group="samples", k=4))
    assert isinstance(samples, TargetStrategy)
    assert (samples.prompt_repeats, samples.critic_snapshots) == (4, 0)
    assert GDMDTarget(GDMDConfig(k=4)).prompt_repeats == 1
    assert GDMDTarget(GDMDConfig(k=4, vary="fake")).prompt_repeats == 1
    assert GDMDConfig().group == "targets"


@pytest.mark.parametrize("vary", ["fake", "both"])
def test_a_sample_group_cannot_vary_the_critic(vary: str) -> None:
    with pytest.raises(ValidationError, match=f'vary = "{vary}" needs group = "targets"'):
        GDMDConfig(group="samples", vary=vary)


def test_advantages_are_taken_within_each_prompt_and_weight_each_sample() -> None:
    # Two prompts of two samples: prompt 0 scores (1, 3), prompt 1 scores (5, 5).
    reward = FixedReward([1.0, 3.0, 5.0, 5.0])
    x = torch.randn(4, *SHAPE, requires_grad=True)
    rewards = [WeightedReward("fixed", reward, weight=1.0, normalise="none")]
    target = GDMDTarget(GDMDConfig(group="samples", k=2, alpha=1.0, beta=1.0, clip=1.0))
    out = target(grouped_ctx(x, 2, rewards))
    assert out.targets.shape == (4, 1, *SHAPE)
    # Prompt 0: z-scores (-1, +1) -> weights 1 - 1, 1 + 1; prompt 1: equal rewards -> 1, 1.
    assert torch.allclose(out.weights, torch.tensor([[0.0], [2.0], [1.0], [1.0]]), atol=1e-5)
    # One reward call over the B rows, each row with its own (repeated) prompt.
    assert reward.prompts == [["prompt 0", "prompt 0", "prompt 1", "prompt 1"]]
    assert not out.weights.requires_grad and not out.targets.requires_grad


def test_signed_weights_clip_and_beta_on_a_group_of_four() -> None:
    # One prompt, K = 4, rewards (0, 0, 0, 4): mean 1, population sd sqrt(3).
    reward = FixedReward([0.0, 0.0, 0.0, 4.0])
    x = torch.randn(4, *SHAPE)
    rewards = [WeightedReward("fixed", reward, weight=1.0, normalise="none")]
    config = GDMDConfig(group="samples", k=4, alpha=1.0, beta=2.0, clip=1.5)
    out = GDMDTarget(config)(grouped_ctx(x, 4, rewards))
    z = torch.tensor([-1.0, -1.0, -1.0, 3.0]) / 3.0**0.5  # (-0.577, ..., 1.732)
    expected = 1.0 + 2.0 * z.clamp(-1.5, 1.5) / 1.5  # the best is clipped at +1.5
    assert torch.allclose(out.weights[:, 0], expected, atol=1e-4)
    assert out.weights[3, 0] == pytest.approx(3.0, abs=1e-5)
    assert out.weights[0, 0] == pytest.approx(1.0 - 2.0 / (1.5 * 3.0**0.5), abs=1e-4)


def test_each_sample_gets_its_own_dmd_target_with_the_draws_of_plain_dmd() -> None:
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(3))
    group = sample_group(make_ctx(x, [], seed=9), 2, "independent")
    targets, _ = dmd_targets(make_ctx(x, [], seed=9), k=1, vary_t=True, vary_fake=False)
    assert group.targets.shape == (4, 1, *SHAPE) and group.times.shape == (4, 1)
    assert torch.equal(group.targets, targets)


def test_shared_and_stratified_times_are_laid_out_over_a_prompts_samples() -> None:
    x = torch.randn(6, *SHAPE)
    first = sample_group(make_ctx(x, [], seed=2), 3, "independent").times.reshape(2, 3)
    shared = sample_group(make_ctx(x, [], seed=2), 3, "shared").times.reshape(2, 3)
    # Every sample of a prompt takes the prompt's first row's time.
    assert torch.equal(shared, first[:, :1].expand(2, 3))
    ctx = dataclasses.replace(make_ctx(x, [], seed=2), renoise_range=(0.05, 0.95))
    stratified = sample_group(ctx, 3, "stratified").times.reshape(2, 3).double()
    steps = stratified.diff(dim=1)
    assert torch.allclose(steps, torch.full_like(steps, 0.3), atol=1e-6)
    u = (first[:, 0].double() - 0.05) / 0.9
    assert torch.allclose(stratified[:, 0], 0.05 + 0.9 * u / 3, atol=1e-6)


def test_a_batch_of_partial_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="a batch of 3 samples is not a whole number of groups"):
        sample_group(make_ctx(torch.randn(3, *SHAPE), []), 2, "independent")


def test_the_warm_up_weights_every_sample_one() -> None:
    reward = FixedReward([1.0, 3.0])
    rewards = [WeightedReward("fixed", reward)]
    config = GDMDConfig(group="samples", k=2, reward_start_step=5)
    out = GDMDTarget(config)(grouped_ctx(torch.randn(2, *SHAPE), 2, rewards))
    assert torch.equal(out.weights, torch.ones(2, 1)) and reward.prompts == []


def test_the_scored_tensor_follows_scored_and_score_step() -> None:
    class MeanReward:
        differentiable = False

        def __init__(self) -> None:
            self.images: list[torch.Tensor] = []

        def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
            self.images.append(images.clone())
            return images.mean(dim=(1, 2, 3))

    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(4))
    for scored, step in (("normalised", 1.0), ("normalised", 0.25), ("unnormalised", 1.0)):
        reward = MeanReward()
        rewards = [WeightedReward("mean", reward)]
        config = GDMDConfig(group="samples", k=2, scored=scored, score_step=step)
        GDMDTarget(config)(grouped_ctx(x, 2, rewards, seed=1))
        group = sample_group(grouped_ctx(x, 2, [], seed=1), 2, "independent")
        direction = group.gradients if scored == "normalised" else group.directions
        expected = PixelDecoder().decode(x - step * direction[:, 0])
        assert torch.allclose(reward.images[0], expected, atol=1e-6), (scored, step)


def test_the_contract_checker_passes_a_sample_group() -> None:
    assert_target_contract(GDMDTarget(GDMDConfig(group="samples", k=3)), batch_size=2)
    assert_target_contract(
        GDMDTarget(GDMDConfig(group="samples", k=2, group_t="shared", t_baseline=True))
    )
