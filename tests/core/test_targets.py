"""Contracts of the built-in target strategies, on analytic stand-in models."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch

from gdmd.errors import ContractError
from gdmd.interfaces import TargetContext, WeightedReward
from gdmd.losses import dmd_gradient, group_advantages, remove_time_trend
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


def _replay_x_t(x: torch.Tensor, seed: int, time_draws: int, k: int) -> tuple:
    """The draws ``make_ctx`` gives a t-group: times first, then one noise per target."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(time_draws, generator=g) * 0.9 + 0.05
    noise = torch.randn(x.shape[0] * k, *SHAPE, generator=g)
    return t, noise, g


def test_gdmd_unnormalised_scores_x_minus_the_raw_direction_and_keeps_the_targets() -> None:
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    seen: list[torch.Tensor] = []

    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        seen.append(images.clone())
        return images.mean(dim=(1, 2, 3))

    rewards = [WeightedReward("r", reward, weight=1.0, normalise="group")]
    default = GDMDTarget(GDMDConfig(k=3))(make_ctx(x, rewards, seed=4))
    raw = GDMDTarget(GDMDConfig(k=3, scored="unnormalised"))(make_ctx(x, rewards, seed=4))
    assert torch.equal(default.targets, raw.targets)
    t, noise, _ = _replay_x_t(x, seed=4, time_draws=6, k=3)
    xk = x.repeat_interleave(3, dim=0)
    x_t = FlowMatchingSchedule().add_noise(xk, noise, t)
    # x0_fake - x0_real = 0.3 x_t - 0.5 x_t on the stand-in models.
    expected = PixelDecoder().decode(xk - (0.3 * x_t - 0.5 * x_t))
    assert torch.allclose(seen[1], expected, atol=1e-6)
    half = GDMDTarget(GDMDConfig(k=3, scored="unnormalised", score_step=0.5))
    half(make_ctx(x, rewards, seed=4))
    assert torch.allclose(seen[2], PixelDecoder().decode(xk + 0.5 * 0.2 * x_t), atol=1e-6)


def test_gdmd_group_t_shared_draws_one_time_per_group_and_a_noise_per_target() -> None:
    reward = WeightedReward("r", RecordingReward())
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    calls: list = []
    out = GDMDTarget(GDMDConfig(k=3, group_t="shared"))(make_ctx(x, [reward], seed=6, calls=calls))
    t, noise, _ = _replay_x_t(x, seed=6, time_draws=2, k=3)
    assert torch.equal(calls[0][2], t.repeat_interleave(3))
    x_t = FlowMatchingSchedule().add_noise(x.repeat_interleave(3, 0), noise, t.repeat_interleave(3))
    expected = x.repeat_interleave(3, 0) - dmd_gradient(
        x.repeat_interleave(3, 0), 0.5 * x_t, 0.3 * x_t
    )
    assert torch.allclose(out.targets.reshape(6, *SHAPE), expected, atol=1e-6)
    assert not torch.allclose(out.targets[:, 0], out.targets[:, 1])  # the noise differs


def test_gdmd_group_t_stratified_puts_one_time_in_each_kth_of_the_range() -> None:
    reward = WeightedReward("r", RecordingReward())
    x = torch.randn(3, *SHAPE)
    calls: list = []
    ctx = dataclasses.replace(
        make_ctx(x, [reward], seed=8, calls=calls), renoise_range=(0.05, 0.95)
    )
    GDMDTarget(GDMDConfig(k=4, group_t="stratified"))(ctx)
    g = torch.Generator().manual_seed(8)
    u = ((torch.rand(3, generator=g) * 0.9 + 0.05) - 0.05) / 0.9
    expected = 0.05 + 0.9 * (torch.arange(4).unsqueeze(0) + u.unsqueeze(1)) / 4
    times = calls[0][2].reshape(3, 4)
    assert torch.allclose(times, expected, atol=1e-6)
    assert torch.equal(((times - 0.05) / 0.9 * 4).floor().long(), torch.arange(4).expand(3, 4))
    with pytest.raises(ValueError, match="renoise_range"):
        GDMDTarget(GDMDConfig(k=4, group_t="stratified"))(make_ctx(x, [reward]))


def test_gdmd_group_t_needs_a_t_group() -> None:
    with pytest.raises(ValueError, match='needs vary = "t" or "both"'):
        GDMDConfig(vary="fake", group_t="shared")
    assert GDMDConfig(vary="both", group_t="stratified").group_t == "stratified"


def test_remove_time_trend_on_hand_built_values() -> None:
    times = torch.tensor([[0.1, 0.3], [0.5, 0.7]])
    wiggle = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # mean 0, orthogonal to centred t
    assert torch.allclose(remove_time_trend(4.0 + 2.0 * times + wiggle, times), wiggle, atol=1e-6)
    flat = torch.full((2, 2), 0.4)
    rewards = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.allclose(remove_time_trend(rewards, flat), rewards - 3.0)


def test_gdmd_t_baseline_ranks_residuals_of_the_reward_against_t() -> None:
    class TimeLike:
        """Scores the decoded image's mean: on these stand-ins it moves with t."""

        differentiable = False

        def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
            return images.mean(dim=(1, 2, 3))

    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    rewards = [WeightedReward("r", TimeLike(), normalise="none")]
    calls: list = []
    plain = GDMDTarget(GDMDConfig(k=3))(make_ctx(x, rewards, seed=9))
    out = GDMDTarget(GDMDConfig(k=3, t_baseline=True))(make_ctx(x, rewards, seed=9, calls=calls))
    scores = TimeLike()(PixelDecoder().decode(out.targets.reshape(12, *SHAPE)), [""] * 12)
    residual = remove_time_trend(scores.reshape(4, 3), calls[0][2].reshape(4, 3))
    assert torch.allclose(out.weights, 1.0 + group_advantages(residual, 1.0), atol=1e-4)
    assert not torch.allclose(out.weights, plain.weights, atol=1e-3)


def test_gdmd_reward_start_step_is_plain_dmd_before_and_scores_from_it() -> None:
    reward = RecordingReward()
    x = torch.randn(2, *SHAPE)
    target = GDMDTarget(GDMDConfig(k=3, reward_start_step=5))
    ctx = make_ctx(x, [WeightedReward("r", reward)], seed=1)
    before = target(dataclasses.replace(ctx, step=4))
    assert reward.batches == [] and torch.equal(before.weights, torch.ones(2, 3))
    assert before.metrics["gdmd/reward_active"] == 0.0
    after = target(dataclasses.replace(make_ctx(x, [WeightedReward("r", reward)], seed=1), step=5))
    assert reward.batches == [6] and after.metrics["gdmd/reward_active"] == 1.0
    assert not torch.equal(after.weights, torch.ones(2, 3))
