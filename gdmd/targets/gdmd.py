"""``gdmd``: rewards score a group of DMD implicit targets; scores weight the update.

GDMD (Dong et al., 2026): instead of scoring the student's raw sample, decode and score the
targets ``x_tgt^k = sg(x - g_k)`` of K DMD gradients that differ in renoise time/noise
(``vary = "t"``), in critic state (``"fake"``: states kept from the critic's inner loop), or
both. Group-relative advantages of the scores become signed weights ``alpha + beta * A_k``
of the K regression terms. ``score_step`` < 1 scores ``x - score_step * g_k`` instead: a
shorter step along the same direction. No gradient flows through decoder or reward, so any
reward works, including a non-differentiable one.
"""

from __future__ import annotations

import torch

from gdmd.interfaces import TargetContext, TargetOutput
from gdmd.losses import gdmd_weights, group_advantages
from gdmd.targets.chunking import chunked_context
from gdmd.targets.common import dmd_targets, score
from gdmd.targets.configs import GDMDConfig


class GDMDTarget:
    """Reward-weighted group of DMD targets (see module docstring)."""

    needs_rewards = True
    needs_differentiable_reward = False

    def __init__(self, config: GDMDConfig) -> None:
        self.config = config
        #: Critic states the loop should keep from its inner loop (for ``vary = "fake"``).
        self.critic_snapshots = config.k if config.vary in ("fake", "both") else 0

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        cfg = self.config
        ctx = chunked_context(ctx, cfg.chunk_size)
        vary_t = cfg.vary in ("t", "both")
        vary_fake = cfg.vary in ("fake", "both")
        targets, metrics = dmd_targets(ctx, k=cfg.k, vary_t=vary_t, vary_fake=vary_fake)
        b = targets.shape[0]
        prompts = [p for p in ctx.prompts for _ in range(cfg.k)]
        scored = targets
        if cfg.score_step != 1.0:
            x = ctx.x.detach().unsqueeze(1)
            scored = x + cfg.score_step * (targets - x)
        with torch.no_grad():
            images = ctx.decoder.decode(scored.reshape(b * cfg.k, *targets.shape[2:]))
            rewards, reward_metrics = score(ctx, images, prompts, group=cfg.k)
        advantages = group_advantages(rewards, cfg.clip)
        if cfg.weighting == "advantage":
            weights = gdmd_weights(advantages, cfg.alpha, cfg.beta)
        else:
            share = torch.softmax(advantages * cfg.clip, dim=1) * cfg.k
            weights = cfg.alpha + cfg.beta * (share - 1.0)
        metrics.update(reward_metrics)
        metrics["gdmd/reward_spread"] = float(
            (rewards.max(1).values - rewards.min(1).values).mean()
        )
        metrics["gdmd/weight_min"] = float(weights.min())
        metrics["gdmd/weight_max"] = float(weights.max())
        return TargetOutput(targets=targets, weights=weights.detach(), metrics=metrics)
