"""The ``target-template`` target strategy: one DMD target per sample, with a fixed weight.

Replace it with your own. The contract (``gdmd.interfaces.TargetStrategy``): from a
``TargetContext`` return detached targets ``[B, K, ...]`` and weights ``[B, K]``, draw random
numbers only through ``ctx.sample_t``, ``ctx.sample_noise`` and ``ctx.generator``, and never
call ``backward`` (the training loop does).
"""

from __future__ import annotations

import torch
from gdmd.interfaces import TargetContext, TargetOutput
from gdmd.losses import dmd_gradient, implicit_target


class TargetTemplateTarget:
    """``sg(x - g)`` with the normalised DMD gradient ``g``, weight ``weight``."""

    needs_rewards = False
    needs_differentiable_reward = False
    #: Critic states to keep from the critic's inner loop (0: only the current critic).
    critic_snapshots = 0
    #: Consecutive rows of the student batch that share a prompt (1: every row its own).
    prompt_repeats = 1

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        x = ctx.x.detach()
        t = ctx.sample_t(x.shape[0]).to(x.device)
        if ctx.sample_noise is not None:  # per-sample draws: the same on any number of processes
            noise = ctx.sample_noise(x.shape[0])
        else:
            noise = torch.randn(x.shape, generator=ctx.generator, device=ctx.generator.device)
        x_t = ctx.schedule.add_noise(x, noise.to(x), t)
        with torch.no_grad():
            real = ctx.real_x0(x_t, t, ctx.cond_real)
            fake = ctx.fake_x0(x_t, t, ctx.cond_fake, None)
        gradient = dmd_gradient(x, real, fake)
        targets = implicit_target(x, gradient).unsqueeze(1)
        weights = torch.full(targets.shape[:2], self.weight, device=x.device)
        metrics = {"target-template/grad_abs": float(gradient.abs().mean())}
        return TargetOutput(targets=targets, weights=weights, metrics=metrics)
