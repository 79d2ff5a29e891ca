"""gdmd-reward-template: a gdmd plugin that registers the reward ``reward-template``.

gdmd imports this module through the ``gdmd`` entry point in pyproject.toml. Keep it cheap to
import (``gdmd list-plugins`` imports every plugin): the reward and torch are imported by the
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

    from gdmd_reward_template.reward import RewardTemplateReward

#: The gdmd plugin API this plugin is written for (gdmd.PLUGIN_API_VERSION).
GDMD_PLUGIN_API = 1


class RewardTemplateConfig(ComponentConfig):
    """Options of the ``reward-template`` reward: the keys of its ``[reward.<label>]`` table."""

    target: float = Field(0.5, ge=0.0, le=1.0, description="The mean brightness that scores best.")


def build_reward(config: RewardTemplateConfig, ctx: BuildContext) -> RewardTemplateReward:
    """Build the reward for ``ctx.device``."""
    from gdmd_reward_template.reward import RewardTemplateReward

    return RewardTemplateReward(config.target, ctx.device)


@gdmd.hookimpl
def gdmd_register_rewards(register: Register) -> None:
    register(
        "reward-template",
        build_reward,
        config=RewardTemplateConfig,
        summary="Prefers images of a given mean brightness (gdmd-reward-template).",
    )
