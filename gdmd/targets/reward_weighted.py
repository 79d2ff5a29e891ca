"""``reward-weighted``: DMD weighted per sample by ``exp(beta * r(D(x)))`` on the raw sample.

The Re-DMD / Reward Forcing baseline (2025): rewards score the student's own (noisy, early)
sample, not the DMD target, and no gradient flows through the reward.
"""

from __future__ import annotations

import torch

from gdmd.interfaces import TargetContext, TargetOutput
from gdmd.targets.common import dmd_targets, score
from gdmd.targets.configs import RewardWeightedConfig


class RewardWeightedTarget:
    """One DMD target per sample, weighted by ``exp(beta * r)`` of the raw decoded sample."""

    needs_rewards = True
    needs_differentiable_reward = False
    critic_snapshots = 0
    prompt_repeats = 1

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
