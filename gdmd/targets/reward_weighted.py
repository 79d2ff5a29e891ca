"""``reward-weighted``: DMD weighted per sample by ``exp(beta * r(D(x)))`` on the raw sample.

The Re-DMD / Reward Forcing baseline (2025): rewards score the student's own (noisy, early)
sample, not the DMD target, and no gradient flows through the reward.
"""

from __future__ import annotations

import torch
from pydantic import Field

from gdmd.config import ComponentConfig
from gdmd.interfaces import BuildContext, TargetContext, TargetOutput
from gdmd.targets.common import dmd_targets, score


class RewardWeightedConfig(ComponentConfig):
    """Options of the ``reward-weighted`` target strategy."""

    beta: float = Field(1.0, ge=0.0, description="Temperature of the exp(beta * r) weights.")
    normalise_weights: bool = Field(
        True,
        description="Divide the weights by their batch mean so the step size matches plain DMD.",
    )


class RewardWeightedTarget:
    """One DMD target per sample, weighted by ``exp(beta * r)`` of the raw decoded sample."""

    needs_rewards = True
    needs_differentiable_reward = False

    def __init__(self, config: RewardWeightedConfig) -> None:
        self.config = config

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        targets, metrics = dmd_targets(ctx, k=1, vary_t=True, vary_fake=False)
        with torch.no_grad():
            images = ctx.decoder.decode(ctx.x.detach())
            rewards, reward_metrics = score(ctx, images, ctx.prompts, group=1)
        weights = torch.exp(self.config.beta * rewards)
        if self.config.normalise_weights:
            weights = weights / weights.mean()
        metrics.update(reward_metrics)
        metrics["reward_weighted/weight_max"] = float(weights.max())
        return TargetOutput(targets=targets, weights=weights.detach(), metrics=metrics)


def build_reward_weighted(config: RewardWeightedConfig, ctx: BuildContext) -> RewardWeightedTarget:
    return RewardWeightedTarget(config)
