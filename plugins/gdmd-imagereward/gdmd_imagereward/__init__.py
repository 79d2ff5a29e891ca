"""gdmd plugin: the ``imagereward`` reward (ImageReward-v1.0).

Registering imports no torch; the model is built by
:func:`gdmd_imagereward.model.build_imagereward` when a recipe uses it.
"""

from __future__ import annotations

from typing import Any

import gdmd
from gdmd_imagereward.config import ImageRewardConfig

__version__ = "0.1.0"
#: The gdmd plugin API this plugin is written for (docs/hooks.md).
GDMD_PLUGIN_API = 1


def _build(config: ImageRewardConfig, ctx: Any) -> Any:
    from gdmd_imagereward.model import build_imagereward

    return build_imagereward(config, ctx)


@gdmd.hookimpl
def gdmd_register_rewards(register: Any) -> None:
    """Register the ``imagereward`` reward."""
    register(
        "imagereward",
        _build,
        config=ImageRewardConfig,
        summary="ImageReward-v1.0 (THUDM/ImageReward checkpoint, BLIP); differentiable",
    )
