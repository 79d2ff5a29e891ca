"""Run-time checks of the tensor contracts in :mod:`gdmd.interfaces`.

A component that breaks its contract fails with a :class:`~gdmd.errors.ContractError` that
names the plugin and the component, instead of a shape error deep inside the loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gdmd.errors import ContractError
from gdmd.interfaces import WeightedReward


def _who(reward: WeightedReward) -> str:
    plugin = f" (plugin {reward.plugin!r})" if reward.plugin else ""
    return f"reward {reward.label!r}{plugin}"


def call_reward(
    reward: WeightedReward, images: torch.Tensor, prompts: Sequence[str]
) -> torch.Tensor:
    """Score ``images`` with ``reward`` and check the result: ``[B]``, float, same device, finite.

    Returns the scores in float32.
    """
    scores = reward.model(images, list(prompts))
    batch = images.shape[0]
    if not isinstance(scores, torch.Tensor):
        raise ContractError(
            f"{_who(reward)} returned {type(scores).__name__}, "
            f"expected a torch.Tensor of shape [{batch}]"
        )
    if tuple(scores.shape) != (batch,):
        raise ContractError(
            f"{_who(reward)} returned shape {list(scores.shape)} for {batch} images, "
            f"expected [{batch}]"
        )
    if not scores.is_floating_point():
        raise ContractError(f"{_who(reward)} returned dtype {scores.dtype}, expected a float dtype")
    if scores.device != images.device:
        raise ContractError(
            f"{_who(reward)} returned scores on {scores.device}, images were on {images.device}"
        )
    finite = torch.isfinite(scores.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ContractError(f"{_who(reward)} returned {bad} non-finite score(s) of {batch}")
    return scores.float()


def check_images(images: torch.Tensor, who: str) -> torch.Tensor:
    """Check a decoder's output: ``[B, 3, H, W]``, floating point."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ContractError(
            f"{who} returned {tuple(images.shape)} {images.dtype}, expected float [B, 3, H, W]"
        )
    return images
