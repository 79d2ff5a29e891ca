"""Pieces shared by the built-in target strategies: building DMD targets and scoring them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gdmd.contracts import call_reward, check_images
from gdmd.interfaces import Conditioning, TargetContext
from gdmd.losses import dmd_gradient, group_normalise, implicit_target


def repeat_cond(cond: Conditioning, k: int) -> Conditioning:
    """Repeat each sample's conditioning ``k`` times, keeping samples' copies adjacent."""
    return {key: value.repeat_interleave(k, dim=0) for key, value in cond.items()}


#: How the renoise times of a target group are drawn (see :func:`target_group`).
GroupTimes = Literal["independent", "shared", "stratified"]


@dataclass
class TargetGroup:
    """``K`` DMD targets per sample and the pieces they are built from, all detached.

    ``targets``: ``x - g`` ``[B, K, ...]`` (in ``x``'s dtype); ``gradients``: the normalised
    DMD gradients ``g`` and ``directions``: the un-normalised ``x0_fake - x0_real``, both
    ``[B, K, ...]`` float32; ``times``: the renoise times ``[B, K]``.
    """

    targets: torch.Tensor
    gradients: torch.Tensor
    directions: torch.Tensor
    times: torch.Tensor
    metrics: dict[str, float]


def group_times(ctx: TargetContext, b: int, k: int, times: GroupTimes) -> torch.Tensor:
    """Renoise times ``[B * K]`` (sample ``i`` owns rows ``i*K .. i*K + K-1``).

    ``"independent"``: every target draws its own time. ``"shared"``: one draw per sample, the
    same for its K targets. ``"stratified"``: one draw ``t0`` per sample, rescaled to
    ``u = (t0 - low) / (high - low)`` on the loop's renoise range, then
    ``t_j = low + (high - low) * (j + u) / K``: one time in each K-th of the range, so every
    group spans the range evenly (a randomly shifted lattice).
    """
    if times == "independent":
        return ctx.sample_t(b * k)
    if times == "shared":
        return ctx.sample_t(b).repeat_interleave(k, dim=0)
    return _stratified(ctx, ctx.sample_t(b), k).reshape(b * k)


def _stratified(ctx: TargetContext, first: torch.Tensor, k: int) -> torch.Tensor:
    """``[n, K]`` times: group ``i``'s draw ``first[i]`` rescaled to ``u`` on the renoise
    range, then ``low + (high - low) * (j + u) / K`` for ``j = 0 .. K-1``."""
    if ctx.renoise_range is None:
        raise ValueError("stratified renoise times need TargetContext.renoise_range")
    low, high = ctx.renoise_range
    u = ((first.double() - low) / (high - low)).clamp(0.0, 1.0 - 1e-9)
    slot = torch.arange(k, dtype=torch.float64, device=u.device)
    lattice = (slot.unsqueeze(0) + u.unsqueeze(1)) / k
    return (low + (high - low) * lattice).float()


def target_group(
    ctx: TargetContext, k: int, times: GroupTimes, shared_noise: bool, vary_fake: bool
) -> TargetGroup:
    """``K`` implicit targets per sample, ``[B, K, ...]``, with their gradients and times.

    ``times``: how the group's renoise times are drawn (:func:`group_times`).
    ``shared_noise``: one noise draw per sample, shared by its K targets (else one per
    target). ``vary_fake``: target ``k`` uses the critic snapshot ``k mod S`` of the ``S``
    states kept from the critic's inner loop (else the current critic). Teacher and critic
    run without grad.
    """
    x = ctx.x.detach()
    b = x.shape[0]
    noise_draws = b if shared_noise else b * k
    t = group_times(ctx, b, k, times)
    if ctx.sample_noise is not None:  # per sample: the same draws on any number of processes
        noise = ctx.sample_noise(noise_draws).to(device=x.device, dtype=x.dtype)
    else:
        noise = torch.randn(
            (noise_draws, *x.shape[1:]), generator=ctx.generator, device=ctx.generator.device
        ).to(device=x.device, dtype=x.dtype)
    if shared_noise:
        noise = noise.repeat_interleave(k, dim=0)
    return targets_at(ctx, t, noise, k, vary_fake)


def targets_at(
    ctx: TargetContext, t: torch.Tensor, noise: torch.Tensor, k: int, vary_fake: bool
) -> TargetGroup:
    """The ``K`` implicit targets per sample of :func:`target_group` at given renoise times
    ``t`` ``[B * K]`` and noise ``[B * K, ...]`` (sample ``i`` owns rows ``i*K .. i*K + K-1``)."""
    x = ctx.x.detach()
    b = x.shape[0]
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
    shape = (b, k, *x.shape[1:])
    metrics = {
        "dmd/grad_abs": float(gradient.abs().mean()),
        "dmd/t_mean": float(t.float().mean()),
    }
    return TargetGroup(
        targets=implicit_target(xk, gradient).reshape(shape),
        gradients=gradient.reshape(shape),
        directions=(fake.detach().float() - real.detach().float()).reshape(shape),
        times=t.float().reshape(b, k),
        metrics=metrics,
    )


def sample_group(ctx: TargetContext, k: int, times: GroupTimes) -> TargetGroup:
    """One implicit target per sample for a batch of prompt groups: rows ``i*K .. i*K + K-1``
    are ``K`` student samples of one prompt (``TargetStrategy.prompt_repeats = K``).

    Every row draws one renoise time and one noise tensor from its own draws; ``times`` lays
    the times out over each prompt's ``K`` rows as :func:`group_times` does over a sample's
    ``K`` targets: ``"independent"`` keeps each row's time, ``"shared"`` gives all ``K`` rows
    the first row's, ``"stratified"`` places them on the first row's shifted lattice. Returns
    ``[B, 1, ...]`` targets (and gradients, directions, times ``[B, 1]``): each sample's own
    DMD target, made with the current critic.
    """
    x = ctx.x.detach()
    b = x.shape[0]
    if b % k:
        raise ValueError(f"a batch of {b} samples is not a whole number of groups of {k}")
    drawn = ctx.sample_t(b).reshape(b // k, k)
    if times == "independent":
        t = drawn
    elif times == "shared":
        t = drawn[:, :1].expand(b // k, k)
    else:
        t = _stratified(ctx, drawn[:, 0], k)
    if ctx.sample_noise is not None:
        noise = ctx.sample_noise(b).to(device=x.device, dtype=x.dtype)
    else:
        noise = torch.randn(
            x.shape, generator=ctx.generator, device=ctx.generator.device
        ).to(device=x.device, dtype=x.dtype)
    return targets_at(ctx, t.reshape(b), noise, 1, vary_fake=False)


def dmd_targets(
    ctx: TargetContext, k: int, vary_t: bool, vary_fake: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """``K`` implicit targets per sample, ``[B, K, ...]``, detached.

    ``vary_t``: each target draws its own renoise time and noise (else one draw per sample,
    shared by its K targets). ``vary_fake``: target ``k`` uses the critic snapshot
    ``k mod S`` of the ``S`` states kept from the critic's inner loop (else the current
    critic). Teacher and critic run without grad.
    """
    group = target_group(
        ctx,
        k,
        times="independent" if vary_t else "shared",
        shared_noise=not vary_t,
        vary_fake=vary_fake,
    )
    return group.targets, group.metrics


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
