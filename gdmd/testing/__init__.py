"""Helpers for testing gdmd and gdmd plugins.

Installing gdmd registers the pytest plugin :mod:`gdmd.testing.plugin` (entry point
``pytest11``) with the fixtures ``gdmd_pm``, ``gdmd_registries``, ``gdmd_build_context``,
``gdmd_images``, ``gdmd_prompts`` and ``gdmd_tiny_teacher``. The contract checkers of
:mod:`gdmd.testing.contracts` are importable from here::

    from gdmd.testing import assert_model_contract, assert_reward_contract, assert_target_contract

pytest imports this package in every session of an environment where gdmd is installed, so
the checkers (and torch) are imported only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gdmd.testing.contracts import (
        CONTRACT_PROMPTS,
        assert_model_contract,
        assert_reward_contract,
        assert_target_contract,
    )

__all__ = [
    "CONTRACT_PROMPTS",
    "assert_model_contract",
    "assert_reward_contract",
    "assert_target_contract",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("gdmd.testing.contracts"), name)
    raise AttributeError(f"module 'gdmd.testing' has no attribute {name!r}")
