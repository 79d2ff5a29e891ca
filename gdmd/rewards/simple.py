"""Simple differentiable rewards for tests, smoke runs and sanity checks.

They need no weights, run anywhere, and have obvious optima, so an end-to-end run can show a
reward moving within seconds. The module imports no torch (it is imported at registration).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from gdmd.config import ComponentConfig
from gdmd.interfaces import BuildContext

if TYPE_CHECKING:  # the module is imported when plugins register: keep torch out of it
    import torch


class BrightnessConfig(ComponentConfig):
    """Options of the ``brightness`` reward."""

    target: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="If set, the reward is -(mean brightness - target)^2; otherwise the mean "
        "brightness itself.",
    )


class BrightnessReward:
    """Mean pixel value of each image (or closeness to a target brightness)."""

    differentiable = True

    def __init__(self, target: float | None) -> None:
        self.target = target

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        mean = images.float().mean(dim=(1, 2, 3))
        if self.target is None:
            return mean
        return -((mean - self.target) ** 2)


def build_brightness(config: BrightnessConfig, ctx: BuildContext) -> BrightnessReward:
    return BrightnessReward(config.target)


class ChannelConfig(ComponentConfig):
    """Options of the ``channel`` reward."""

    channel: Literal["red", "green", "blue"] = Field(
        "red", description="The colour whose dominance is rewarded."
    )


class ChannelReward:
    """How much one colour channel dominates: its mean minus the mean of the other two."""

    differentiable = True

    def __init__(self, channel: str) -> None:
        self.index = ["red", "green", "blue"].index(channel)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        means = images.float().mean(dim=(2, 3))
        others = [i for i in range(3) if i != self.index]
        return means[:, self.index] - means[:, others].mean(dim=1)


def build_channel(config: ChannelConfig, ctx: BuildContext) -> ChannelReward:
    return ChannelReward(config.channel)
