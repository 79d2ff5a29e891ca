"""gdmd-target-template: a gdmd plugin that registers the target ``target-template``.

gdmd imports this module through the ``gdmd`` entry point in pyproject.toml. Keep it cheap to
import (``gdmd list-plugins`` imports every plugin): the target and torch are imported by the
factory, when a recipe builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gdmd
from gdmd.config import ComponentConfig
from pydantic import Field

if TYPE_CHECKING:
    from gdmd.interfaces import BuildContext
    from gdmd.registry import Register

    from gdmd_target_template.target import TargetTemplateTarget

#: The gdmd plugin API this plugin is written for (gdmd.PLUGIN_API_VERSION).
GDMD_PLUGIN_API = 1


class TargetTemplateConfig(ComponentConfig):
    """Options of the ``target-template`` target strategy: the keys of the ``[target]`` table."""

    weight: float = Field(1.0, gt=0.0, description="Weight of every sample's DMD target.")


def build_target(config: TargetTemplateConfig, ctx: BuildContext) -> TargetTemplateTarget:
    """Build the target strategy."""
    from gdmd_target_template.target import TargetTemplateTarget

    return TargetTemplateTarget(config.weight)


@gdmd.hookimpl
def gdmd_register_targets(register: Register) -> None:
    register(
        "target-template",
        build_target,
        config=TargetTemplateConfig,
        summary="One DMD target per sample with a fixed weight (gdmd-target-template).",
    )
