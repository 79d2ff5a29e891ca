"""assert_target_contract: passes gdmd's target strategies, names what a broken one does."""

from __future__ import annotations

import pytest
import torch

from gdmd.interfaces import TargetContext, TargetOutput, TargetStrategy
from gdmd.manager import GdmdPluginManager
from gdmd.testing import assert_target_contract


class OneTarget:
    """A correct strategy: one DMD-like target per sample, weight 1, noise from ctx."""

    needs_rewards = False
    needs_differentiable_reward = False
    critic_snapshots = 0
    prompt_repeats = 1

    def targets(self, ctx: TargetContext) -> torch.Tensor:
        x = ctx.x.detach()
        t = ctx.sample_t(x.shape[0])
        noise = torch.randn(x.shape, generator=ctx.generator)
        x_t = ctx.schedule.add_noise(x, noise, t)
        real = ctx.real_x0(x_t, t, ctx.cond_real)
        fake = ctx.fake_x0(x_t, t, ctx.cond_fake, None)
        return (x - (fake - real)).unsqueeze(1)

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        targets = self.targets(ctx)
        weights = torch.ones(targets.shape[:2])
        return TargetOutput(targets=targets, weights=weights, metrics={"t": 0.5})


class NoFlags(OneTarget):
    needs_rewards = "no"  # type: ignore[assignment]


class BadSnapshots(OneTarget):
    critic_snapshots = -1


class BadRepeats(OneTarget):
    prompt_repeats = 0


class NoSnapshotCount:
    """A strategy written before ``critic_snapshots`` joined the protocol."""

    needs_rewards = False
    needs_differentiable_reward = False
    __call__ = OneTarget.__call__
    targets = OneTarget.targets


class ReturnsTuple(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return out.targets, out.weights


class NoGroupAxis(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return TargetOutput(targets=out.targets[:, 0], weights=out.weights)


class KeepsGraph(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return TargetOutput(targets=out.targets + 0 * ctx.x.unsqueeze(1), weights=out.weights)


class HalfPrecision(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return TargetOutput(targets=out.targets.half(), weights=out.weights)


class FlatWeights(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return TargetOutput(targets=out.targets, weights=out.weights[:, 0])


class NaNWeights(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return TargetOutput(targets=out.targets, weights=out.weights * torch.nan)


class VectorExtraLoss(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return TargetOutput(targets=out.targets, weights=out.weights, extra_loss=ctx.x.sum(1))


class TensorMetric(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return TargetOutput(out.targets, out.weights, metrics={"loss": ctx.x.mean()})


class CallsBackward(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        ctx.x.square().mean().backward()
        return super().__call__(ctx)


class CallsAutogradBackward(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        weight = torch.ones(1, requires_grad=True)
        torch.autograd.backward((weight * 2).sum())
        return super().__call__(ctx)


class EditsSample(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            ctx.x.clamp_(-0.5, 0.5)
        return super().__call__(ctx)


class GlobalNoise(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        return TargetOutput(out.targets + torch.randn(out.targets.shape), out.weights)


class UnkeptSnapshot(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        x = ctx.x.detach()
        ctx.fake_x0(x, torch.full((x.shape[0],), 0.5), ctx.cond_fake, 2)
        return super().__call__(ctx)


class ShortConditioning(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        x = ctx.x.detach().repeat(2, 1, 1, 1)
        ctx.real_x0(x, torch.full((x.shape[0],), 0.5), ctx.cond_real)
        return super().__call__(ctx)


class NeedsSampleNoise(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        ctx.sample_noise(ctx.x.shape[0])
        return super().__call__(ctx)


class UsesSampleNoise(OneTarget):
    """A correct strategy that takes the loop's per-sample noise when there is some."""

    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        out = super().__call__(ctx)
        if ctx.sample_noise is not None:
            noise = ctx.sample_noise(ctx.x.shape[0]).unsqueeze(1)
            out = TargetOutput(out.targets + 0.01 * noise, out.weights, metrics=out.metrics)
        return out


class Raises(OneTarget):
    def __call__(self, ctx):  # type: ignore[no-untyped-def]
        raise KeyError("reward")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (NoFlags(), "must have an attribute `needs_rewards` (True or False), got 'no'"),
        (BadSnapshots(), "has critic_snapshots = -1, expected a non-negative int"),
        (BadRepeats(), "has prompt_repeats = 0, expected a positive int"),
        (NoSnapshotCount(), "must have an attribute `critic_snapshots`: how many critic states"),
        (ReturnsTuple(), "returned tuple, expected a gdmd.interfaces.TargetOutput"),
        (NoGroupAxis(), "returned targets of shape [2, 3, 8, 8] for a student sample of shape"),
        (KeepsGraph(), "returned targets that carry a gradient; detach them"),
        (HalfPrecision(), "returned targets as torch.float16 on cpu, expected the student"),
        (FlatWeights(), "returned weights of shape [2] for targets of shape [2, 1, 3, 8, 8]"),
        (NaNWeights(), "returned non-finite weights"),
        (VectorExtraLoss(), "returned extra_loss Tensor [2, 8, 8] torch.float32 on cpu"),
        (TensorMetric(), "returned metric 'loss' = tensor("),
        (CallsBackward(), "called backward; a target strategy returns targets"),
        (CallsAutogradBackward(), "called backward"),
        (EditsSample(), "modified the student sample ctx.x in place"),
        (GlobalNoise(), "is not deterministic under a seed"),
        (UnkeptSnapshot(), "asked for critic snapshot 2, but 0 were kept"),
        (ShortConditioning(), "called the teacher with 4 samples but a conditioning of batch"),
        (NeedsSampleNoise(), "raised TypeError: 'NoneType' object is not callable"),
        (Raises(), "raised KeyError: 'reward'"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_a_broken_target_fails_with_a_message_naming_it(target: object, message: str) -> None:
    with pytest.raises(AssertionError) as caught:
        assert_target_contract(target)
    text = str(caught.value)
    assert text.startswith(f"target {__name__}.{type(target).__qualname__}"), text
    assert message in text


def test_a_correct_target_passes() -> None:
    assert_target_contract(OneTarget(), image_size=(4, 6), batch_size=3, seed=7)
    assert_target_contract(UsesSampleNoise())


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("dmd", {}),
        ("gdmd", {}),
        ("gdmd", {"vary": "fake", "k": 3}),
        ("gdmd", {"vary": "both", "weighting": "softmax"}),
        ("reward-weighted", {}),
        ("dmdr", {"hinge": 0.7}),
    ],
)
def test_the_built_in_targets_pass(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: object, name: str, config: dict
) -> None:
    target = gdmd_pm.registries.targets.get(name).build(config, gdmd_build_context)
    assert isinstance(target, TargetStrategy)
    assert_target_contract(target)
