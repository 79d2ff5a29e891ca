"""Samplers written against the :class:`~gdmd.interfaces.DiffusionModel` protocol.

Every sampler sees the model only as an x0-predictor and moves between times with the
schedule's ``alpha``/``sigma``, so the same code samples a flow-matching or an epsilon model.

Timestep convention (shared with the student's fixed timesteps of the recipe): ``timesteps``
are the times at which the model is *evaluated*, strictly decreasing in ``(0, 1]``, e.g.
``[1.0, 0.75, 0.5, 0.25]`` for a 4-step student. ``noise`` is taken to be the sample at
``timesteps[0]`` (pure noise when that is 1). The last evaluation's x0-prediction is the
result, so ``len(timesteps)`` is the number of function evaluations.

All samplers run without grad.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gdmd.interfaces import Conditioning, DiffusionModel, NoiseSchedule


def default_timesteps(
    steps: int, schedule: NoiseSchedule | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """``steps`` evenly spaced evaluation times from 1 down to ``1 / steps``.

    A schedule with a ``shift_time`` method (SD3's timestep shift) has it applied.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    timesteps = torch.linspace(1.0, 0.0, steps + 1, device=device)[:-1]
    shift = getattr(schedule, "shift_time", None)
    return shift(timesteps) if shift is not None else timesteps


def _check_timesteps(timesteps: torch.Tensor | Sequence[float]) -> torch.Tensor:
    times = torch.as_tensor(timesteps, dtype=torch.float32).flatten()
    if times.numel() == 0:
        raise ValueError("timesteps is empty")
    if bool((times <= 0).any()) or bool((times > 1).any()):
        raise ValueError(f"timesteps must lie in (0, 1], got {times.tolist()}")
    if times.numel() > 1 and not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"timesteps must be strictly decreasing, got {times.tolist()}")
    return times


def _alpha_sigma(schedule: NoiseSchedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha, sigma = getattr(schedule, "alpha", None), getattr(schedule, "sigma", None)
    if alpha is None or sigma is None:
        raise TypeError(
            f"{type(schedule).__name__} has no alpha(t)/sigma(t); the samplers need both"
        )
    return alpha(t), sigma(t)


def _batch_times(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(device=like.device, dtype=like.dtype).expand(like.shape[0])


def _fresh_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the generator's device, then moved, so a CPU generator drives a GPU sampler
    # with the same draws.
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)


@torch.no_grad()
def euler_sample(
    model: DiffusionModel,
    cond: Conditioning,
    noise: torch.Tensor,
    timesteps: torch.Tensor | Sequence[float],
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """Deterministic sampling: the DDIM step with ``eta = 0`` (Song et al., 2021) in x0 form.

    At each time ``t`` the model predicts ``x0_hat``; the implied noise is
    ``eps_hat = (x_t - alpha(t) x0_hat) / sigma(t)`` and the next sample is
    ``x_{t'} = alpha(t') x0_hat + sigma(t') eps_hat``. For rectified flow (``alpha = 1 - t``,
    ``sigma = t``) this is exactly the Euler step along the predicted velocity,
    ``x_{t'} = x0_hat + t' (x_t - x0_hat) / t``. Returns the last ``x0_hat``.
    """
    times = _check_timesteps(timesteps)
    schedule = model.schedule
    x_t = noise
    x0_hat = noise
    for i, t in enumerate(times):
        x0_hat = model(x_t, _batch_times(t, x_t), cond, guidance_scale)
        if i + 1 == len(times):
            break
        t_next = times[i + 1]
        alpha, sigma = _alpha_sigma(schedule, t)
        alpha_next, sigma_next = _alpha_sigma(schedule, t_next)
        eps_hat = (x_t - alpha * x0_hat) / sigma
        x_t = alpha_next * x0_hat + sigma_next * eps_hat
    return x0_hat


@torch.no_grad()
def consistency_sample(
    model: DiffusionModel,
    cond: Conditioning,
    noise: torch.Tensor,
    timesteps: torch.Tensor | Sequence[float],
    generator: torch.Generator,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """The few-step student sampler of DMD2 (Yin et al., 2024, §4.5).

    At each time the model predicts ``x0_hat``, which is re-noised to the next time with
    *fresh* noise drawn from ``generator`` (``schedule.add_noise``); the last ``x0_hat`` is the
    sample. This matches the backward simulation the student is trained with.
    """
    times = _check_timesteps(timesteps)
    schedule = model.schedule
    x_t = noise
    x0_hat = noise
    for i, t in enumerate(times):
        x0_hat = model(x_t, _batch_times(t, x_t), cond, guidance_scale)
        if i + 1 == len(times):
            break
        x_t = schedule.add_noise(
            x0_hat, _fresh_noise(x0_hat, generator), _batch_times(times[i + 1], x0_hat)
        )
    return x0_hat


def _device_and_dtype(model: DiffusionModel) -> tuple[torch.device, torch.dtype]:
    parameters = getattr(model, "parameters", None)
    if parameters is not None:
        for parameter in parameters():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def sample(
    model: DiffusionModel,
    prompts: Sequence[str],
    steps: int,
    guidance_scale: float | None,
    generator: torch.Generator,
    timesteps: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """Sample ``len(prompts)`` x0s ``[B, *sample_shape]`` with :func:`euler_sample`.

    The starting noise is drawn from ``generator``. ``timesteps`` defaults to ``steps`` evenly
    spaced times (see :func:`default_timesteps`); when given, ``steps`` is ignored.
    """
    device, dtype = _device_and_dtype(model)
    cond = {key: value.to(device) for key, value in model.encode_prompts(list(prompts)).items()}
    like = torch.empty((len(prompts), *model.sample_shape), device=device, dtype=dtype)
    noise = _fresh_noise(like, generator)
    if timesteps is None:
        timesteps = default_timesteps(steps, model.schedule)
    return euler_sample(model, cond, noise, timesteps, guidance_scale)
