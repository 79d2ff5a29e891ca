"""The reward contract: :func:`assert_reward_contract`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from gdmd.testing.contracts.common import (
    batch_prompts,
    check,
    close,
    describe,
    image_shape,
    max_difference,
    summary,
)

__all__ = ["assert_reward_contract"]


def _parameter_device(component: object) -> torch.device | None:
    if isinstance(component, torch.nn.Module):
        for parameter in component.parameters():
            return parameter.device
    return None


def _reward_device(reward: object) -> torch.device:
    """Where to put the images: the reward's ``device`` attribute, else the device of its
    parameters (an ``nn.Module``), else the CPU."""
    device = getattr(reward, "device", None)
    if isinstance(device, (str, torch.device)):
        return torch.device(device)
    return _parameter_device(reward) or torch.device("cpu")


def _score(
    reward: Callable[..., Any], who: str, images: torch.Tensor, prompts: list[str]
) -> torch.Tensor:
    """Call the reward and check the result: a finite float Tensor [B] on the images' device."""
    batch = images.shape[0]
    try:
        scores = reward(images, prompts)
    except Exception as exc:
        raise AssertionError(
            f"{who} raised {type(exc).__name__}: {exc} (scoring {batch} images "
            f"{list(images.shape[1:])} with {len(prompts)} prompts)"
        ) from exc
    check(
        isinstance(scores, torch.Tensor),
        f"{who} returned {summary(scores)}, expected a torch.Tensor of shape [{batch}]",
    )
    check(
        tuple(scores.shape) == (batch,),
        f"{who} returned shape {list(scores.shape)} for {batch} images, expected [{batch}]",
    )
    check(
        scores.is_floating_point(),
        f"{who} returned dtype {scores.dtype}, expected a floating-point dtype",
    )
    check(
        scores.device == images.device,
        f"{who} returned scores on {scores.device}, but the images were on {images.device}",
    )
    finite = torch.isfinite(scores.detach())
    check(
        bool(finite.all()),
        f"{who} returned {int((~finite).sum())} non-finite score(s) of {batch}: "
        f"{scores.detach().tolist()}",
    )
    return scores


def assert_reward_contract(
    reward: Any,
    *,
    image_size: int | tuple[int, int] = 32,
    batch_size: int = 3,
    prompts: Sequence[str] | None = None,
    atol: float = 1e-5,
    seed: int = 0,
) -> None:
    """Check that ``reward`` keeps the :class:`~gdmd.interfaces.RewardModel` contract.

    The reward scores seeded random images ``[batch_size, 3, H, W]`` in ``[0, 1]``
    (``image_size`` is ``H = W`` or ``(H, W)``), put on the reward's ``device`` attribute or
    the device of its parameters (CPU otherwise), with ``prompts`` (default: distinct
    prompts from :data:`CONTRACT_PROMPTS`). It must:

    * have a ``differentiable`` attribute that is a ``bool``;
    * work under ``torch.no_grad()`` (gdmd scores targets without grad, whatever the reward)
      and return a finite floating-point Tensor ``[batch_size]`` on the images' device,
      without modifying the images in place;
    * be deterministic: the same images and prompts give the same scores;
    * score each sample independently of its batch mates: the batch permuted, and each
      sample alone, give the same scores (gdmd batches images as it pleases, e.g. all K
      targets of a group in one call);
    * given one prompt fewer than images, raise an exception, or, for a reward that ignores
      its prompts, return the same scores: never scores paired with the wrong prompts;
    * if ``differentiable`` is true, pass a finite, non-zero gradient to the pixels.

    Scores are compared with ``torch.allclose(..., rtol=0, atol=atol)``. Raises
    :class:`AssertionError` naming the reward and the broken rule.
    """
    who = describe(reward, "reward")
    height, width = image_shape(image_size)
    prompts = batch_prompts(prompts, batch_size)
    differentiable = getattr(reward, "differentiable", None)
    check(
        isinstance(differentiable, bool),
        f"{who} must have an attribute `differentiable` (True or False), got {differentiable!r}",
    )
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((batch_size, 3, height, width), generator=generator)
    images = images.to(_reward_device(reward))
    original = images.clone()

    with torch.no_grad():
        scores = _score(reward, who, images, prompts)
        check(torch.equal(images, original), f"{who} modified the images it scored in place")
        again = _score(reward, who, images, prompts)
        check(
            close(again, scores, atol),
            f"{who} is not deterministic: scoring the same images twice gave scores that "
            f"differ by up to {max_difference(again, scores):.3g} (atol {atol:g})",
        )

        order = torch.randperm(batch_size, generator=generator).tolist()
        if batch_size > 1 and order == sorted(order):
            order = order[1:] + order[:1]
        permuted = _score(reward, who, images[order], [prompts[i] for i in order])
        check(
            close(permuted, scores[order], atol),
            f"{who} gives a sample a score that depends on its batch mates: the same "
            f"{batch_size} images in another order scored differently, by up to "
            f"{max_difference(permuted, scores[order]):.3g} (atol {atol:g})",
        )
        for i in range(batch_size):
            alone = _score(reward, who, images[i : i + 1], prompts[i : i + 1])
            check(
                close(alone, scores[i : i + 1], atol),
                f"{who} gives a sample a score that depends on its batch mates: image {i} "
                f"scored {float(alone[0]):.6g} alone and {float(scores[i]):.6g} in a batch "
                f"of {batch_size} (atol {atol:g})",
            )

        if batch_size > 1:
            _check_prompt_mismatch(reward, who, images, prompts, scores, atol)

    if differentiable:
        _check_reward_gradient(reward, who, images, prompts)


def _check_prompt_mismatch(
    reward: Callable[..., Any],
    who: str,
    images: torch.Tensor,
    prompts: list[str],
    scores: torch.Tensor,
    atol: float,
) -> None:
    batch = images.shape[0]
    try:
        result = reward(images, prompts[:-1])
    except Exception:
        return  # the reward refused the mismatch: what the contract asks
    same = isinstance(result, torch.Tensor) and close(result, scores, atol)
    check(
        same,
        f"{who} accepted {batch} images with {batch - 1} prompts and returned "
        f"{summary(result)} that differs from its scores with {batch} prompts; a reward "
        "must raise an error when the number of prompts does not match the images",
    )


def _check_reward_gradient(
    reward: Callable[..., Any], who: str, images: torch.Tensor, prompts: list[str]
) -> None:
    pixels = images.clone().requires_grad_(True)
    with torch.enable_grad():
        scores = _score(reward, who, pixels, prompts)
        check(
            scores.requires_grad,
            f"{who} says differentiable = True, but its scores carry no gradient (computed "
            "under no_grad, or detached?); set differentiable = False if that is intended",
        )
        (grad,) = torch.autograd.grad(scores.sum(), pixels, allow_unused=True)
    check(
        grad is not None,
        f"{who} says differentiable = True, but no gradient reaches the pixels",
    )
    assert grad is not None  # for type checkers; _check above has failed otherwise
    check(bool(torch.isfinite(grad).all()), f"{who} passes a non-finite gradient to the pixels")
    check(
        bool(grad.abs().sum() > 0),
        f"{who} says differentiable = True, but the gradient reaching the pixels is zero",
    )
