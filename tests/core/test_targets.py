"""Contracts of the built-in target strategies, on analytic stand-in models."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from gdmd.errors import ContractError
from gdmd.interfaces import TargetContext, WeightedReward
from gdmd.losses import dmd_gradient, group_advantages
from gdmd.schedules import FlowMatchingSchedule
from gdmd.targets.configs import DMDRConfig, GDMDConfig, RewardWeightedConfig
from gdmd.targets.dmd import DMDTarget
from gdmd.targets.dmdr import DMDRTarget
from gdmd.targets.gdmd import GDMDTarget
from gdmd.targets.reward_weighted import RewardWeightedTarget

SHAPE = (3, 4, 4)


class PixelDecoder:
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents + 1) / 2


class RecordingReward:
    """Scores mean red minus mean blue; records whether grad was enabled when called."""

    def __init__(self, differentiable: bool = True) -> None:
        self.differentiable = differentiable
        self.grad_enabled: list[bool] = []
        self.batches: list[int] = []

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        self.batches.append(images.shape[0])
        assert len(prompts) == images.shape[0]
        return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def make_ctx(
    x: torch.Tensor,
    rewards: list[WeightedReward],
    snapshots: int = 0,
    seed: int = 0,
    calls: list[tuple[str, int | None, torch.Tensor]] | None = None,
) -> TargetContext:
    schedule = FlowMatchingSchedule()
    log = calls if calls is not None else []

    def real_x0(x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        log.append(("real", None, t.clone()))
        return 0.5 * x_t

    def fake_x0(x_t: torch.Tensor, t: torch.Tensor, cond: dict, snap: int | None) -> torch.Tensor:
        log.append(("fake", snap, t.clone()))
        scale = 0.3 if snap is None else 0.1 * (snap + 1)
        return scale * x_t

    generator = torch.Generator().manual_seed(seed)
    cond = {"tokens": torch.arange(x.shape[0]).unsqueeze(1)}
    return TargetContext(
        x=x,
        prompts=[f"prompt {i}" for i in range(x.shape[0])],
        cond_real=cond,
        cond_fake=cond,
        schedule=schedule,
        real_x0=real_x0,
        fake_x0=fake_x0,
        num_critic_snapshots=snapshots,
        sample_t=lambda n: torch.rand(n, generator=generator) * 0.9 + 0.05,
        decoder=PixelDecoder(),
        rewards=rewards,
        generator=generator,
        step=0,
    )


def test_dmd_target_equals_hand_built_dmd_step() -> None:
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    out = DMDTarget()(make_ctx(x, [], seed=5))
    assert out.targets.shape == (2, 1, *SHAPE)
    assert torch.equal(out.weights, torch.ones(2, 1))
    # Replay the same draws: t first, then the noise, from the same seeded generator.
    g = torch.Generator().manual_seed(5)
    t = torch.rand(2, generator=g) * 0.9 + 0.05
    noise = torch.randn(2, *SHAPE, generator=g)
    x_t = FlowMatchingSchedule().add_noise(x, noise, t)
    expected = x - dmd_gradient(x, 0.5 * x_t, 0.3 * x_t)
    assert torch.allclose(out.targets[:, 0], expected, atol=1e-6)
    assert not out.targets.requires_grad


def test_gdmd_scores_targets_without_grad_and_weights_by_advantage() -> None:
    reward = RecordingReward()
    x = torch.randn(3, *SHAPE, requires_grad=True)
    target = GDMDTarget(GDMDConfig(k=4, vary="t", alpha=1.0, beta=1.0, clip=1.0))
    out = target(make_ctx(x, [WeightedReward("r", reward, weight=1.0, normalise="group")]))
    assert out.targets.shape == (3, 4, *SHAPE)
    assert out.weights.shape == (3, 4)
    assert reward.grad_enabled == [False]  # one batched, no-grad call for all B*K targets
    assert reward.batches == [12]
    scores = reward(PixelDecoder().decode(out.targets.reshape(12, *SHAPE)), ["p"] * 12)
    expected = 1.0 + group_advantages(scores.reshape(3, 4), 1.0)
    assert torch.allclose(out.weights, expected, atol=1e-4)
    assert not out.weights.requires_grad and not out.targets.requires_grad
    assert out.weights.min() >= 0.0 and out.weights.max() <= 2.0
    assert "reward/r" in out.metrics


def test_gdmd_score_step_scores_a_shorter_step_but_regresses_onto_the_full_target() -> None:
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    seen: list[torch.Tensor] = []

    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        seen.append(images.clone())
        return images.mean(dim=(1, 2, 3))

    rewards = [WeightedReward("r", reward, weight=1.0, normalise="group")]
    full = GDMDTarget(GDMDConfig(k=3))(make_ctx(x, rewards, seed=4))
    short = GDMDTarget(GDMDConfig(k=3, score_step=0.25))(make_ctx(x, rewards, seed=4))
    assert torch.equal(full.targets, short.targets)
    xk = x.unsqueeze(1)
    expected = PixelDecoder().decode(xk + 0.25 * (full.targets - xk)).reshape(6, *SHAPE)
    assert torch.allclose(seen[1], expected, atol=1e-6)
    assert torch.allclose(seen[0], PixelDecoder().decode(full.targets).reshape(6, *SHAPE))
    with pytest.raises(ValueError, match="score_step"):
        GDMDConfig(score_step=0.0)


def test_gdmd_vary_t_draws_a_time_per_target_and_vary_fake_shares_it() -> None:
    reward = WeightedReward("r", RecordingReward())
    x = torch.randn(2, *SHAPE)
    calls: list = []
    GDMDTarget(GDMDConfig(k=3, vary="t"))(make_ctx(x, [reward], calls=calls))
    real_t = calls[0][2]
    assert real_t.shape == (6,) and len(set(real_t.tolist())) == 6
    assert [c[1] for c in calls if c[0] == "fake"] == [None]

    calls.clear()
    GDMDTarget(GDMDConfig(k=3, vary="fake"))(make_ctx(x, [reward], snapshots=2, calls=calls))
    real_t = calls[0][2]
    assert torch.equal(real_t, real_t.reshape(2, 3)[:, :1].repeat_interleave(3, 0).flatten())
    assert [c[1] for c in calls if c[0] == "fake"] == [0, 1, 0]  # k mod snapshots

    calls.clear()
    GDMDTarget(GDMDConfig(k=3, vary="both"))(make_ctx(x, [reward], snapshots=3, calls=calls))
    assert len(set(calls[0][2].tolist())) == 6
    assert [c[1] for c in calls if c[0] == "fake"] == [0, 1, 2]


def test_gdmd_asks_for_critic_snapshots_only_when_varying_the_critic() -> None:
    assert GDMDTarget(GDMDConfig(k=4, vary="t")).critic_snapshots == 0
    assert GDMDTarget(GDMDConfig(k=4, vary="fake")).critic_snapshots == 4
    assert GDMDTarget(GDMDConfig(k=5, vary="both")).critic_snapshots == 5


def test_gdmd_mixes_rewards_after_normalising_each() -> None:
    class Scaled(RecordingReward):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

        def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
            return self.scale * super().__call__(images, prompts)

    x = torch.randn(2, *SHAPE)
    cfg = GDMDConfig(k=4, beta=1.0)
    small = GDMDTarget(cfg)(make_ctx(x, [WeightedReward("a", Scaled(1.0))], seed=2))
    large = GDMDTarget(cfg)(make_ctx(x, [WeightedReward("a", Scaled(1000.0))], seed=2))
    # Group normalisation makes the weights independent of a reward's scale.
    assert torch.allclose(small.weights, large.weights, atol=1e-4)


def test_gdmd_beta_above_alpha_gives_negative_weights() -> None:
    x = torch.randn(4, *SHAPE)
    out = GDMDTarget(GDMDConfig(k=4, alpha=1.0, beta=3.0))(
        make_ctx(x, [WeightedReward("r", RecordingReward())])
    )
    assert out.weights.min() < 0


def test_dmdr_reward_loss_reaches_the_student_sample() -> None:
    reward = RecordingReward()
    x = torch.randn(2, *SHAPE, requires_grad=True)
    out = DMDRTarget(DMDRConfig(reward_scale=2.0))(make_ctx(x, [WeightedReward("r", reward, 0.5)]))
    assert DMDRTarget.needs_differentiable_reward
    assert out.extra_loss is not None and out.extra_loss.requires_grad
    out.extra_loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(out.weights, torch.ones(2, 1))
    # loss = 2 * 0.5 * mean(-(red - blue)) on the decoded sample
    images = PixelDecoder().decode(x.detach())
    expected = -(images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))).mean()
    assert out.extra_loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_dmdr_hinge() -> None:
    x = torch.zeros(2, *SHAPE)
    out = DMDRTarget(DMDRConfig(hinge=0.7))(make_ctx(x, [WeightedReward("r", RecordingReward())]))
    assert out.extra_loss.item() == pytest.approx(0.7)  # reward is 0 on grey images


def test_reward_weighted_scores_the_raw_sample() -> None:
    reward = RecordingReward()
    x = torch.randn(4, *SHAPE)
    out = RewardWeightedTarget(RewardWeightedConfig(beta=0.5))(
        make_ctx(x, [WeightedReward("r", reward, normalise="group")])
    )
    assert reward.batches == [4] and reward.grad_enabled == [False]
    raw = reward(PixelDecoder().decode(x), ["p"] * 4)
    z = (raw - raw.mean()) / (raw.std(unbiased=False) + 1e-6)
    w = torch.exp(0.5 * z)
    assert torch.allclose(out.weights[:, 0], w / w.mean(), atol=1e-5)
    assert out.weights.mean().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda n: torch.zeros(n, 1), r"returned shape \[4, 1\] for 4 images, expected \[4\]"),
        (lambda n: torch.zeros(n, dtype=torch.long), "returned dtype torch.int64"),
        (lambda n: torch.full((n,), float("nan")), "returned 4 non-finite score"),
        (lambda n: [0.0] * n, "returned list"),
    ],
)
def test_reward_contract_errors_name_the_plugin(bad, message: str) -> None:
    class Bad:
        differentiable = False

        def __call__(self, images: torch.Tensor, prompts: Sequence[str]):
            return bad(images.shape[0])

    x = torch.randn(1, *SHAPE)
    ctx = make_ctx(x, [WeightedReward("mine", Bad(), plugin="gdmd-bad-reward")])
    with pytest.raises(ContractError, match=message) as info:
        GDMDTarget(GDMDConfig(k=4))(ctx)
    assert "reward 'mine' (plugin 'gdmd-bad-reward')" in str(info.value)
