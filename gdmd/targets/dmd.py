"""``dmd``: plain DMD/DMD2, one implicit target per sample, no reward."""

from __future__ import annotations

import torch

from gdmd.interfaces import TargetContext, TargetOutput
from gdmd.targets.common import dmd_targets


class DMDTarget:
    """One DMD target ``sg(x - g)`` per sample, weight 1 (Yin et al. 2024, DMD2 form)."""

    needs_rewards = False
    needs_differentiable_reward = False
    critic_snapshots = 0
    prompt_repeats = 1

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        targets, metrics = dmd_targets(ctx, k=1, vary_t=True, vary_fake=False)
        weights = torch.ones(targets.shape[:2], device=targets.device)
        return TargetOutput(targets=targets, weights=weights, metrics=metrics)
