"""Built-in model families, registered through ``gdmd_register_models``.

Factories import their family (and torch, diffusers) only when a recipe builds them.
"""

from __future__ import annotations

from typing import Any

from gdmd import hookimpl
from gdmd.registry import Register
from gdmd.toy.teacher import ToyTeacherConfig


def _tiny_unet(config: Any, ctx: Any) -> Any:
    from gdmd.models.tiny import build_tiny_unet

    return build_tiny_unet(config, ctx)


def _toy_teacher(config: ToyTeacherConfig, ctx: Any) -> Any:
    from gdmd.toy.teacher import build_toy_teacher

    return build_toy_teacher(config, ctx)


def _sd3(config: Any, ctx: Any) -> Any:
    from gdmd.models.sd3 import build_sd3

    return build_sd3(config, ctx)


@hookimpl
def gdmd_register_models(register: Register) -> None:
    """Register the built-in model families."""
    from gdmd.models.sd3_config import SD3Config
    from gdmd.models.tiny_config import TinyUNetConfig

    register(
        "tiny-unet",
        _tiny_unet,
        config=TinyUNetConfig,
        summary="Tiny text-conditioned pixel-space U-Net (flow matching), built in code",
    )
    register(
        "toy-teacher",
        _toy_teacher,
        config=ToyTeacherConfig,
        summary="tiny-unet trained on the toy shapes domain; trained on first use and cached",
    )
    register(
        "sd3",
        _sd3,
        config=SD3Config,
        summary="Stable Diffusion 3 / 3.5 (diffusers), full or LoRA fine-tuning",
    )
