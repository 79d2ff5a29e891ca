"""The math of DMD and GDMD as small pure tensor functions.

No models, no I/O: each function states its equation and is tested against hand-computed
values. Losses are computed in float32 whatever the input dtype. Nothing here masks a
non-finite value; the loop checks finiteness and stops the run with a clear message.

References: DMD (Yin et al., CVPR 2024) eq. 7 with the eq. 8 normaliser, in the
"gradient as a detached regression target" form of the DMD2 code; GDMD (Dong et al., 2026)
for rewards on the implicit targets; DiffusionNFT (Zheng et al., 2025) for the clipped,
group-normalised advantage.
"""

from __future__ import annotations

import torch


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: ``[B, ...] -> [B]``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def dmd_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """The normalised DMD gradient, per sample.

    ``g(x) = (x0_fake - x0_real) / mean_{non-batch dims} |x - x0_real|``

    ``x`` is the student sample, ``x0_real`` the teacher's (CFG) x0-prediction and
    ``x0_fake`` the critic's, all ``[B, ...]``. Descending ``g`` moves ``x`` toward the
    teacher's denoised estimate and away from the critic's. Returned in float32, detached.
    """
    x, real, fake = (v.detach().float() for v in (x, x0_real, x0_fake))
    scale = _per_sample_mean((x - real).abs())
    return (fake - real) / scale.reshape(-1, *([1] * (x.ndim - 1)))


def implicit_target(x: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """The DMD implicit target tensor ``sg(x - g)``: where one DMD step wants ``x`` to go."""
    return (x.detach().float() - gradient).to(x.dtype)


def gradient_target_loss(
    x: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``0.5 * mean (x - sg(target))^2``, so that ``dL/dx = (x - target) / N``.

    With ``target = x - g`` the gradient wrt ``x`` is ``g / N`` (``N`` = number of elements),
    which is how DMD's gradient is injected through autograd. ``weights`` ``[B]`` weight the
    per-sample means before the batch mean: ``mean_b(w_b * 0.5 * mean_i (x_bi - t_bi)^2)``;
    weights of one give exactly the unweighted loss.
    """
    per_sample = 0.5 * _per_sample_mean((x.float() - target.detach().float()) ** 2)
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(
            f"weights must have shape {tuple(per_sample.shape)}, got {tuple(weights.shape)}"
        )
    return (weights.detach().float() * per_sample).mean()


def group_target_loss(
    x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """GDMD's student loss over a target group.

    ``L = mean_b mean_k w_bk * 0.5 * mean_i (x_bi - sg(target_bki))^2``

    ``x``: ``[B, ...]``; ``targets``: ``[B, K, ...]``; ``weights``: ``[B, K]``. With ``K = 1``
    and unit weights this is :func:`gradient_target_loss`.
    """
    b, k = weights.shape
    if targets.shape[:2] != (b, k) or targets.shape[2:] != x.shape[1:]:
        raise ValueError(
            f"targets must have shape {(b, k, *x.shape[1:])}, got {tuple(targets.shape)}"
        )
    diff = x.float().unsqueeze(1) - targets.detach().float()
    per_target = 0.5 * diff.reshape(b, k, -1).pow(2).mean(dim=2)
    return (weights.detach().float() * per_target).mean()


def group_normalise(values: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Z-score along the last dimension: ``(v - mean) / (std + eps)``, population std.

    Used to put each reward on a common scale within its group before rewards are mixed
    (so a reward with a large range does not drown the others). A constant group gives 0.
    """
    values = values.float()
    mean = values.mean(dim=-1, keepdim=True)
    std = values.std(dim=-1, keepdim=True, unbiased=False)
    return (values - mean) / (std + eps)


def group_advantages(rewards: torch.Tensor, clip: float) -> torch.Tensor:
    """Group-relative advantages, clipped and scaled into ``[-1, 1]``.

    ``A = clip((r - mean_K r) / (std_K r + 1e-6), -c, c) / c`` for rewards ``[B, K]``, with the
    population standard deviation over each group of K.
    """
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    return group_normalise(rewards).clamp(-clip, clip) / clip


def remove_time_trend(rewards: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Rewards minus their least-squares line in the renoise time, over the whole batch.

    ``r'_bk = r_bk - (a + b * t_bk)`` with ``(a, b)`` fitted on all ``B * K`` pairs of
    ``rewards`` and ``times`` (both ``[B, K]``): a per-``t`` baseline, so that a group's
    advantages do not rank its targets by how noisy their renoise time was. When every time is
    the same (nothing to fit a slope on) only the mean is removed.
    """
    r = rewards.float().reshape(-1)
    t = times.float().reshape(-1)
    t_centred = t - t.mean()
    r_centred = r - r.mean()
    spread = (t_centred**2).sum()
    slope = (t_centred * r_centred).sum() / spread if float(spread) > 0 else spread * 0.0
    return (r_centred - slope * t_centred).reshape(rewards.shape)


def gdmd_weights(advantages: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Per-target weights ``alpha + beta * A``.

    ``alpha`` keeps the plain DMD anchor, ``beta`` is the guidance strength; with
    ``alpha = beta = 1`` the worst target of a group gets weight 0 and the best 2, and with
    ``beta > alpha`` low-scoring targets push the sample away (negative weights).
    """
    return alpha + beta * advantages


def denoising_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The critic's (and teacher's) denoising loss: ``mean (output - target)^2`` in float32.

    ``target`` is the schedule's training target (velocity ``eps - x0`` for flow matching,
    ``eps`` for epsilon models) on a detached student sample.
    """
    return (output.float() - target.detach().float()).pow(2).mean()
