"""``dmdr``: DMD plus a reward loss on the raw decoded student sample (DMDR-style ReFL).

The "naive fusion" baseline GDMD argues against (Jiang et al., 2025): the reward is computed on
``D(x)`` and back-propagated through decoder and reward into the student, so every reward
must be differentiable.
"""

from __future__ import annotations

import torch

from gdmd.contracts import call_reward, check_images
from gdmd.interfaces import TargetContext, TargetOutput
from gdmd.targets.common import dmd_targets
from gdmd.targets.configs import DMDRConfig


class DMDRTarget:
    """One DMD target per sample plus ``reward_scale * sum_j w_j * loss(r_j(D(x)))``."""

    needs_rewards = True
    needs_differentiable_reward = True
    critic_snapshots = 0
    prompt_repeats = 1

    def __init__(self, config: DMDRConfig) -> None:
        self.config = config

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        targets, metrics = dmd_targets(ctx, k=1, vary_t=True, vary_fake=False)
        weights = torch.ones(targets.shape[:2], device=targets.device)
        images = check_images(ctx.decoder.decode(ctx.x), "decoder")
        extra = torch.zeros((), device=ctx.x.device)
        for reward in ctx.rewards:
            r = call_reward(reward, images, ctx.prompts)
            metrics[f"reward/{reward.label}"] = float(r.detach().mean())
            per_sample = torch.relu(self.config.hinge - r) if self.config.hinge is not None else -r
            extra = extra + reward.weight * per_sample.mean()
        extra = self.config.reward_scale * extra
        metrics["dmdr/reward_loss"] = float(extra.detach())
        return TargetOutput(targets=targets, weights=weights, extra_loss=extra, metrics=metrics)
