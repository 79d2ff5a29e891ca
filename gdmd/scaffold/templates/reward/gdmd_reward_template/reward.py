"""The ``reward-template`` reward: prefers images whose mean brightness is close to a target.

Replace the scoring with your own. The contract (``gdmd.interfaces.RewardModel``): images float
``[B, 3, H, W]`` in ``[0, 1]`` and ``B`` prompts in; a finite float Tensor ``[B]`` out, on the
images' device, each score independent of the rest of the batch; higher is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RewardTemplateReward:
    """Scores ``-(mean brightness - target)^2``; differentiable."""

    #: Whether gradients flow from the score to the pixels (only the dmdr target needs them).
    differentiable = True

    def __init__(self, target: float, device: torch.device) -> None:
        self.target = target
        self.device = device

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(
                f"reward-template: {images.shape[0]} images but {len(prompts)} prompts"
            )
        brightness = images.float().mean(dim=(1, 2, 3))
        return -((brightness - self.target) ** 2)
