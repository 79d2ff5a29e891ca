"""Pieces shared by the built-in target strategies: building DMD targets and scoring them."""

from __future__ import annotations

import torch

from gdmd.contracts import call_reward, check_images
from gdmd.interfaces import Conditioning, TargetContext
from gdmd.losses import dmd_gradient, group_normalise, implicit_target


def repeat_cond(cond: Conditioning, k: int) -> Conditioning:
    """Repeat each sample's conditioning ``k`` times, keeping samples' copies adjacent."""
    return {key: value.repeat_interleave(k, dim=0) for key, value in cond.items()}


def dmd_targets(
    ctx: TargetContext, k: int, vary_t: bool, vary_fake: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """``K`` implicit targets per sample, ``[B, K, ...]``, detached.

    ``vary_t``: each target draws its own renoise time and noise (else one draw per sample,
    shared by its K targets). ``vary_fake``: target ``k`` uses the critic snapshot
    ``k mod S`` of the ``S`` states kept from the critic's inner loop (else the current
    critic). Teacher and critic run without grad.
    """
    x = ctx.x.detach()
    b = x.shape[0]
    draws = b * k if vary_t else b
    t = ctx.sample_t(draws)
    if ctx.sample_noise is not None:  # per sample: the same draws on any number of processes
        noise = ctx.sample_noise(draws).to(device=x.device, dtype=x.dtype)
    else:
        noise = torch.randn(
            (draws, *x.shape[1:]), generator=ctx.generator, device=ctx.generator.device
        ).to(device=x.device, dtype=x.dtype)
    if not vary_t:
        t = t.repeat_interleave(k, dim=0)
        noise = noise.repeat_interleave(k, dim=0)
    xk = x.repeat_interleave(k, dim=0)
    x_t = ctx.schedule.add_noise(xk, noise, t.to(x.device))
    t = t.to(x.device)
    with torch.no_grad():
        real = ctx.real_x0(x_t, t, repeat_cond(ctx.cond_real, k))
        if vary_fake and ctx.num_critic_snapshots > 0:
            fake = torch.empty_like(real)
            cond_fake = repeat_cond(ctx.cond_fake, k)
            slot = torch.arange(b * k, device=x.device) % k
            for j in range(k):
                rows = slot == j
                snapshot = j % ctx.num_critic_snapshots
                sub = {key: value[rows] for key, value in cond_fake.items()}
                fake[rows] = ctx.fake_x0(x_t[rows], t[rows], sub, snapshot).to(fake.dtype)
        else:
            fake = ctx.fake_x0(x_t, t, repeat_cond(ctx.cond_fake, k), None)
    gradient = dmd_gradient(xk, real, fake)
    targets = implicit_target(xk, gradient).reshape(b, k, *x.shape[1:])
    metrics = {
        "dmd/grad_abs": float(gradient.abs().mean()),
        "dmd/t_mean": float(t.float().mean()),
    }
    return targets, metrics


def score(
    ctx: TargetContext, images: torch.Tensor, prompts: list[str], group: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mix every reward of ``ctx`` on ``images`` (``[B*group, 3, H, W]``) into ``[B, group]``.

    Each reward is scored, checked against its contract, normalised per its ``normalise``
    setting (``"group"``: z-score within each group of ``group``; with ``group == 1`` the
    z-score is taken over the batch instead) and weighted. The metrics hold each reward's raw
    mean.
    """
    check_images(images, "decoder")
    mixed = torch.zeros(images.shape[0] // group, group, device=images.device)
    metrics: dict[str, float] = {}
    for reward in ctx.rewards:
        raw = call_reward(reward, images, prompts).reshape(-1, group)
        metrics[f"reward/{reward.label}"] = float(raw.detach().mean())
        if reward.normalise == "group":
            value = (
                group_normalise(raw)
                if group > 1
                else group_normalise(raw.reshape(1, -1)).reshape(-1, 1)
            )
        else:
            value = raw
        mixed = mixed + reward.weight * value
    return mixed, metrics
