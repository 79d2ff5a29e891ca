"""Built-in reward models, registered through ``gdmd_register_rewards``."""

from __future__ import annotations

from gdmd import hookimpl
from gdmd.registry import Register
from gdmd.rewards.simple import BrightnessConfig, ChannelConfig, build_brightness, build_channel


@hookimpl
def gdmd_register_rewards(register: Register) -> None:
    """Register the built-in reward models."""
    register(
        "brightness", build_brightness, config=BrightnessConfig,
        summary="Mean pixel value (or closeness to a target); differentiable, for smoke tests",
    )
    register(
        "channel", build_channel, config=ChannelConfig,
        summary="How much one colour channel dominates; differentiable, for smoke tests",
    )
