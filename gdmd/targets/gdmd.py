"""``gdmd``: rewards score a group of DMD implicit targets; scores weight the update.

GDMD (Dong et al., 2026): instead of scoring the student's raw sample, decode and score the
targets ``x_tgt^k = sg(x - g_k)`` of K DMD gradients that differ in renoise time/noise
(``vary = "t"``), in critic state (``"fake"``: states kept from the critic's inner loop), or
both. Group-relative advantages of the scores become signed weights ``alpha + beta * A_k``
of the K regression terms. ``score_step`` < 1 scores ``x - score_step * g_k`` instead: a
shorter step along the same direction; ``scored = "unnormalised"`` scores
``x - score_step * (x0_fake - x0_real)``, the direction before DMD's normaliser. ``group_t``
lays out a t-group's times (independent, shared, stratified), ``t_baseline`` removes the
batch's reward-against-t line before the advantages, and before ``reward_start_step`` the
update is plain DMD over the group. No gradient flows through decoder or reward, so any
reward works, including a non-differentiable one.

``group = "samples"`` forms the group from ``K`` student samples of one prompt instead (GRPO's
group, Shao et al. 2024, on DMD targets rather than raw samples): the loop puts each prompt
in ``K`` consecutive rows (:attr:`prompt_repeats`), each sample gets its own single DMD
target, its scored tensor is scored, and the advantages are taken over the prompt's ``K``
samples. Sample ``b``'s DMD regression is weighted ``alpha + beta * A_b``: samples whose
targets score above their prompt's mean take a larger DMD step, those below a smaller one
(or, with ``beta > alpha``, a step against DMD's direction).
"""

from __future__ import annotations

import torch

from gdmd.interfaces import TargetContext, TargetOutput
from gdmd.losses import gdmd_weights, group_advantages, remove_time_trend
from gdmd.targets.chunking import chunked_context
from gdmd.targets.common import TargetGroup, sample_group, score, target_group
from gdmd.targets.configs import GDMDConfig


class GDMDTarget:
    """Reward-weighted group of DMD targets (see module docstring)."""

    needs_rewards = True
    needs_differentiable_reward = False

    def __init__(self, config: GDMDConfig) -> None:
        self.config = config
        #: Critic states the loop keeps from its inner loop: one per target of a group
        #: varied in the critic (``vary = "fake"`` or ``"both"``), none otherwise.
        self.critic_snapshots: int = config.k if config.vary in ("fake", "both") else 0
        #: ``group = "samples"``: each prompt fills ``k`` consecutive rows of the batch.
        self.prompt_repeats: int = config.k if config.group == "samples" else 1

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        cfg = self.config
        ctx = chunked_context(ctx, cfg.chunk_size)
        group = self._group(ctx)
        targets, metrics = group.targets, group.metrics
        b, per_row = targets.shape[:2]
        if ctx.step < cfg.reward_start_step:
            # DMD warm-up: the group's plain DMD update, nothing scored.
            metrics["gdmd/reward_active"] = 0.0
            return TargetOutput(
                targets=targets,
                weights=torch.ones(b, per_row, device=targets.device),
                metrics=metrics,
            )
        prompts = [p for p in ctx.prompts for _ in range(per_row)]
        direction = group.gradients if cfg.scored == "normalised" else group.directions
        scored = ctx.x.detach().float().unsqueeze(1) - cfg.score_step * direction
        with torch.no_grad():
            images = ctx.decoder.decode(
                scored.to(targets.dtype).reshape(b * per_row, *targets.shape[2:])
            )
            # [groups, K]: a sample's K targets, or a prompt's K samples (rows in order).
            rewards, reward_metrics = score(ctx, images, prompts, group=cfg.k)
        if cfg.t_baseline:
            times = group.times.reshape(rewards.shape)
            rewards = remove_time_trend(rewards, times.to(rewards.device))
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
        metrics["gdmd/reward_active"] = 1.0
        return TargetOutput(
            targets=targets, weights=weights.detach().reshape(b, per_row), metrics=metrics
        )

    def _group(self, ctx: TargetContext) -> TargetGroup:
        """The targets of the configured group: ``[B, K, ...]`` for a group of targets,
        ``[B, 1, ...]`` for a group of samples."""
        cfg = self.config
        if cfg.group == "samples":
            return sample_group(ctx, cfg.k, cfg.group_t)
        vary_t = cfg.vary in ("t", "both")
        return target_group(
            ctx,
            cfg.k,
            times=cfg.group_t if vary_t else "shared",
            shared_noise=not vary_t,
            vary_fake=cfg.vary in ("fake", "both"),
        )
