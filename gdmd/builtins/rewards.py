"""Built-in reward models, registered through ``gdmd_register_rewards``."""

from __future__ import annotations

from gdmd import hookimpl
from gdmd.registry import Register
from gdmd.rewards.simple import BrightnessConfig, ChannelConfig, build_brightness, build_channel


@hookimpl
def gdmd_register_rewards(register: Register) -> None:
    """Register the built-in reward models."""
    from gdmd.toy.factories import (
        ToyAlignmentRewardConfig,
        ToyCheckerRewardConfig,
        build_alignment_reward,
        build_checker_reward,
    )

    register(
        "brightness",
        build_brightness,
        config=BrightnessConfig,
        summary="Mean pixel value (or closeness to a target); differentiable, for smoke tests",
    )
    register(
        "channel",
        build_channel,
        config=ChannelConfig,
        summary="How much one colour channel dominates; differentiable, for smoke tests",
    )
    register(
        "toy-alignment",
        build_alignment_reward,
        config=ToyAlignmentRewardConfig,
        summary="Learned prompt alignment on toy shapes (tiny CLIP); differentiable, cached",
    )
    register(
        "toy-checker",
        build_checker_reward,
        config=ToyCheckerRewardConfig,
        summary="Exact rule-based checker of toy prompts (GenEval analogue); 0/1, "
        "not differentiable",
    )
