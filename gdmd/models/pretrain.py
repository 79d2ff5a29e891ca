"""Pretraining a diffusion model from scratch: how the toy teacher is made.

The loss is each schedule's own denoising regression, ``|| output - schedule.training_target
||^2`` on the *raw* network output (velocity for flow matching). It needs that raw output, so
the model must expose ``predict_output(x_t, t, cond)`` besides the ``DiffusionModel``
protocol (see :class:`PretrainableModel`). The alternative, a loss on ``predict_x0`` scaled by
``1 / t^2`` to equal the velocity loss, divides by a vanishing time near the data end; the raw
output avoids that and is exactly the loss the critic uses (:func:`gdmd.losses.denoising_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from gdmd.errors import ContractError, NonFiniteError
from gdmd.interfaces import Conditioning, DiffusionModel
from gdmd.losses import denoising_loss


@runtime_checkable
class PretrainableModel(DiffusionModel, Protocol):
    """A :class:`~gdmd.interfaces.DiffusionModel` that also exposes its raw network output."""

    training: bool

    def train(self, mode: bool = True) -> Any: ...

    def predict_output(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Network output in ``schedule.prediction_type`` (no guidance)."""
        ...


def _drop_prompts(
    prompts: Sequence[str], probability: float, generator: torch.Generator
) -> list[str]:
    keep = torch.rand(len(prompts), generator=generator, device=generator.device) >= probability
    return [p if bool(k) else "" for p, k in zip(prompts, keep.tolist(), strict=True)]


def _warmup_factor(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def pretrain_flow_matching(
    model: PretrainableModel,
    batches: Iterator[tuple[torch.Tensor, list[str]]],
    steps: int,
    lr: float,
    generator: torch.Generator,
    *,
    prompt_dropout: float = 0.1,
    ema_decay: float | None = 0.999,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    warmup_steps: int | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> PretrainableModel:
    """Train ``model`` as a text-conditioned denoiser for ``steps`` steps; returns it.

    ``batches`` yields ``(images [B, *sample_shape] in [-1, 1], prompts of length B)``.
    Each step (SD3's recipe, Esser et al., 2024, at toy scale):

    1. replace each prompt by ``""`` with probability ``prompt_dropout`` (the unconditional
       branch of classifier-free guidance);
    2. draw ``t`` logit-normal (``sigmoid`` of a standard normal) and noise, both from
       ``generator``, and noise the images with ``model.schedule``;
    3. regress ``model.predict_output`` onto ``schedule.training_target``;
    4. AdamW with ``lr`` after a linear warmup (default: 5% of the steps, at most 200), with
       the gradient norm clipped to ``max_grad_norm``.

    With ``ema_decay`` set, an exponential moving average of the trainable parameters is
    kept, its decay warmed up as ``min(ema_decay, (1 + n) / (10 + n))`` so short runs are
    not dominated by the initialisation, and loaded into ``model`` at the end. ``progress``
    is called as ``progress(step, loss)`` after every step (``step`` from 1).

    Randomness comes only from ``generator``; the model's train/eval mode is restored.
    """
    _check_arguments(model, steps, prompt_dropout, ema_decay)
    if warmup_steps is None:
        warmup_steps = min(200, math.ceil(0.05 * steps))
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters that require grad")
    schedule = model.schedule
    optimizer, scheduler = _optimizer(params, lr, weight_decay, warmup_steps)
    ema = [p.detach().clone() for p in params] if ema_decay is not None else None
    was_training = model.training
    model.train()
    for step in range(1, steps + 1):
        # Steps 1 and 2 of the docstring: drop prompts, draw t and noise.
        x0, noise, t, cond = _noised_batch(
            model, next(batches), prompt_dropout, generator, params[0]
        )
        # Step 3: the schedule's own denoising regression on the raw output.
        output = model.predict_output(schedule.add_noise(x0, noise, t), t, cond)
        loss = denoising_loss(output, schedule.training_target(x0, noise, t))
        if not torch.isfinite(loss):
            raise NonFiniteError(f"pretraining loss is {loss.item()} at step {step}")
        # Step 4: the clipped AdamW update, then the average of the weights.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
        optimizer.step()
        scheduler.step()

        if ema is not None and ema_decay is not None:
            _update_average(ema, params, min(ema_decay, step / (9.0 + step)))
        if progress is not None:
            progress(step, float(loss.detach()))
    if ema is not None:
        with torch.no_grad():
            for average, param in zip(ema, params, strict=True):
                param.copy_(average)
    model.train(was_training)
    return model


def _check_arguments(
    model: PretrainableModel, steps: int, prompt_dropout: float, ema_decay: float | None
) -> None:
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if not 0.0 <= prompt_dropout <= 1.0:
        raise ValueError(f"prompt_dropout must lie in [0, 1], got {prompt_dropout}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    if not hasattr(model, "predict_output"):
        raise TypeError(
            f"{type(model).__name__} has no predict_output(x_t, t, cond); pretraining "
            "regresses the raw network output"
        )


def _optimizer(
    params: list[torch.nn.Parameter], lr: float, weight_decay: float, warmup_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its linear warmup of the learning rate over ``warmup_steps``."""
    # The fused kernel is several times faster for a small model's many small tensors.
    fused = params[0].device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmup_factor(step, warmup_steps)
    )
    return optimizer, scheduler


def _noised_batch(
    model: PretrainableModel,
    batch: tuple[torch.Tensor, list[str]],
    prompt_dropout: float,
    generator: torch.Generator,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Conditioning]:
    """Steps 1 and 2 of a pretraining step: ``(x0, noise, t, cond)`` on the device and in
    the dtype of ``like`` (the first trainable parameter), the prompts dropped, then ``t``,
    then the noise drawn from ``generator``, in that order."""
    device, dtype = like.device, like.dtype
    images, prompts = batch
    x0 = images.to(device=device, dtype=dtype)
    if tuple(x0.shape[1:]) != tuple(model.sample_shape) or x0.shape[0] != len(prompts):
        raise ContractError(
            f"pretraining batch has images {list(x0.shape)} and {len(prompts)} prompts; "
            f"expected [B, {', '.join(map(str, model.sample_shape))}] and B prompts"
        )
    cond = model.encode_prompts(_drop_prompts(prompts, prompt_dropout, generator))
    cond = {key: value.to(device) for key, value in cond.items()}
    gen_device = generator.device
    t = torch.sigmoid(torch.randn(x0.shape[0], generator=generator, device=gen_device))
    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=dtype)
    t, noise = t.to(device=device, dtype=dtype), noise.to(device)
    return x0, noise, t, cond


def _update_average(
    average: list[torch.Tensor], params: list[torch.nn.Parameter], decay: float
) -> None:
    """``average <- decay * average + (1 - decay) * params``, in place."""
    with torch.no_grad():
        for mean, param in zip(average, params, strict=True):
            mean.lerp_(param.detach(), 1.0 - decay)
