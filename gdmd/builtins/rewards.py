"""Built-in reward models, registered through ``gdmd_register_rewards``."""

from __future__ import annotations

from typing import Any

from gdmd import hookimpl
from gdmd.registry import Register
from gdmd.rewards.aesthetic_config import AestheticConfig
from gdmd.rewards.clip_config import CLIPScoreConfig, PickScoreConfig
from gdmd.rewards.simple import BrightnessConfig, ChannelConfig, build_brightness, build_channel


def _clip(config: CLIPScoreConfig, ctx: Any) -> Any:
    from gdmd.rewards.clip import build_clip_score

    return build_clip_score(config, ctx)


def _pickscore(config: PickScoreConfig, ctx: Any) -> Any:
    from gdmd.rewards.clip import build_pickscore

    return build_pickscore(config, ctx)


def _aesthetic(config: AestheticConfig, ctx: Any) -> Any:
    from gdmd.rewards.aesthetic import build_aesthetic

    return build_aesthetic(config, ctx)


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
    register(
        "clip",
        _clip,
        config=CLIPScoreConfig,
        summary="CLIPScore, 100 * cos(image, text) (openai/clip-vit-large-patch14); differentiable",
    )
    register(
        "pickscore",
        _pickscore,
        config=PickScoreConfig,
        summary="PickScore, logit_scale.exp() * cos (yuvalkirstain/PickScore_v1); differentiable",
    )
    register(
        "aesthetic",
        _aesthetic,
        config=AestheticConfig,
        summary="LAION aesthetic predictor v2, an MLP on the CLIP ViT-L/14 image embedding "
        "(ignores the prompt); differentiable",
    )
