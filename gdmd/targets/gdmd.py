"""``gdmd``: rewards score a group of DMD implicit targets; scores weight the update.

GDMD (Dong et al., 2026): instead of scoring the student's raw sample, decode and score the
targets ``x_tgt^k = sg(x - g_k)`` of K DMD gradients that differ in renoise time/noise
(``vary = "t"``), in critic state (``"fake"``: states kept from the critic's inner loop), or
both. Group-relative advantages of the scores become signed weights ``alpha + beta * A_k``
of the K regression terms. No gradient flows through decoder or reward, so any reward works,
including a non-differentiable one.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from gdmd.config import ComponentConfig
from gdmd.interfaces import BuildContext, TargetContext, TargetOutput
from gdmd.losses import gdmd_weights, group_advantages
from gdmd.targets.common import dmd_targets, score


class GDMDConfig(ComponentConfig):
    """Options of the ``gdmd`` target strategy."""

    k: int = Field(4, ge=2, le=64, description="Targets per sample (the group size K).")
    vary: Literal["t", "fake", "both"] = Field(
        "t",
        description='What differs between a group\'s targets: renoise time and noise ("t"), '
        'critic snapshot from the inner loop ("fake"), or both.',
    )
    alpha: float = Field(1.0, ge=0.0, description="Weight of the plain DMD anchor.")
    beta: float = Field(1.0, ge=0.0, description="Guidance strength: weight of the advantage.")
    clip: float = Field(
        1.0, gt=0.0, description="Advantages are clipped to [-clip, clip] and divided by clip."
    )
    weighting: Literal["advantage", "softmax"] = Field(
        "advantage",
        description='"advantage": alpha + beta * A_k (signed). "softmax": alpha + beta * '
        "(K * softmax_k(A_k * clip) - 1), positive when beta <= alpha.",
    )


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
        vary_t = cfg.vary in ("t", "both")
        vary_fake = cfg.vary in ("fake", "both")
        targets, metrics = dmd_targets(ctx, k=cfg.k, vary_t=vary_t, vary_fake=vary_fake)
        b = targets.shape[0]
        prompts = [p for p in ctx.prompts for _ in range(cfg.k)]
        with torch.no_grad():
            images = ctx.decoder.decode(targets.reshape(b * cfg.k, *targets.shape[2:]))
            rewards, reward_metrics = score(ctx, images, prompts, group=cfg.k)
        advantages = group_advantages(rewards, cfg.clip)
        if cfg.weighting == "advantage":
            weights = gdmd_weights(advantages, cfg.alpha, cfg.beta)
        else:
            share = torch.softmax(advantages * cfg.clip, dim=1) * cfg.k
            weights = cfg.alpha + cfg.beta * (share - 1.0)
        metrics.update(reward_metrics)
        metrics["gdmd/reward_spread"] = float((rewards.max(1).values - rewards.min(1).values).mean())
        metrics["gdmd/weight_min"] = float(weights.min())
        metrics["gdmd/weight_max"] = float(weights.max())
        return TargetOutput(targets=targets, weights=weights.detach(), metrics=metrics)


def build_gdmd(config: GDMDConfig, ctx: BuildContext) -> GDMDTarget:
    return GDMDTarget(config)
