"""Built-in gradient-target strategies, registered through ``gdmd_register_targets``.

Factories import their module (and torch) only when a recipe builds them, so listing plugins
stays cheap.
"""

from __future__ import annotations

from typing import Any

from gdmd import hookimpl
from gdmd.registry import Register
from gdmd.targets.configs import DMDConfig, DMDRConfig, GDMDConfig, RewardWeightedConfig


def _dmd(config: DMDConfig, ctx: Any) -> Any:
    from gdmd.targets.dmd import DMDTarget

    return DMDTarget()


def _gdmd(config: GDMDConfig, ctx: Any) -> Any:
    from gdmd.targets.gdmd import GDMDTarget

    return GDMDTarget(config)


def _dmdr(config: DMDRConfig, ctx: Any) -> Any:
    from gdmd.targets.dmdr import DMDRTarget

    return DMDRTarget(config)


def _reward_weighted(config: RewardWeightedConfig, ctx: Any) -> Any:
    from gdmd.targets.reward_weighted import RewardWeightedTarget

    return RewardWeightedTarget(config)


@hookimpl
def gdmd_register_targets(register: Register) -> None:
    """Register the built-in gradient-target strategies."""
    register(
        "dmd", _dmd, config=DMDConfig, summary="Plain DMD/DMD2: one implicit target, no reward"
    )
    register(
        "gdmd",
        _gdmd,
        config=GDMDConfig,
        summary="GDMD: rewards score a group of K DMD targets; advantages weight the update",
    )
    register(
        "dmdr",
        _dmdr,
        config=DMDRConfig,
        summary="DMD + reward loss back-propagated from the raw decoded sample (ReFL-style)",
    )
    register(
        "reward-weighted",
        _reward_weighted,
        config=RewardWeightedConfig,
        summary="DMD weighted per sample by exp(beta * reward) of the raw sample",
    )
