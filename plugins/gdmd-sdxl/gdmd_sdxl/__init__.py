"""gdmd plugin: the ``sdxl`` model family (Stable Diffusion XL through diffusers).

Registering imports no torch; the model is built by :func:`gdmd_sdxl.loading.build_sdxl` when
a recipe uses it.
"""

from __future__ import annotations

from typing import Any

import gdmd
from gdmd_sdxl.config import SDXLConfig

__version__ = "0.1.0"
#: The gdmd plugin API this plugin is written for (docs/hooks.md).
GDMD_PLUGIN_API = 1


def _build(config: SDXLConfig, ctx: Any) -> Any:
    from gdmd_sdxl.loading import build_sdxl

    return build_sdxl(config, ctx)


@gdmd.hookimpl
def gdmd_register_models(register: Any) -> None:
    """Register the ``sdxl`` model family (teacher, student and critic)."""
    register(
        "sdxl",
        _build,
        config=SDXLConfig,
        summary="Stable Diffusion XL (diffusers UNet, epsilon/DDPM), full or LoRA fine-tuning",
        roles=("teacher", "student", "critic"),
    )
