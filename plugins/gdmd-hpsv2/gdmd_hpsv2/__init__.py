"""gdmd plugin: the ``hpsv2`` reward (Human Preference Score v2 and v2.1).

Registering imports no torch; the model is built by :func:`gdmd_hpsv2.model.build_hpsv2`
when a recipe uses it.
"""

from __future__ import annotations

from typing import Any

import gdmd
from gdmd_hpsv2.config import HPSv2Config

__version__ = "0.1.0"
#: The gdmd plugin API this plugin is written for (docs/hooks.md).
GDMD_PLUGIN_API = 1


def _build(config: HPSv2Config, ctx: Any) -> Any:
    from gdmd_hpsv2.model import build_hpsv2

    return build_hpsv2(config, ctx)


@gdmd.hookimpl
def gdmd_register_rewards(register: Any) -> None:
    """Register the ``hpsv2`` reward."""
    register(
        "hpsv2",
        _build,
        config=HPSv2Config,
        summary="Human Preference Score v2 / v2.1 (xswu/HPSv2 checkpoints); differentiable",
    )
