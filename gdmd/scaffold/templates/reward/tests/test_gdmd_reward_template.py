"""Tests of the reward ``reward-template``: it keeps gdmd's reward contract and does its job.

The fixtures (``gdmd_pm``, ``gdmd_build_context``, ...) come from gdmd's pytest plugin,
installed with gdmd.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from gdmd.interfaces import BuildContext
from gdmd.manager import GdmdPluginManager
from gdmd.testing import assert_reward_contract

import gdmd_reward_template

ROOT = Path(__file__).resolve().parents[1]


def build(pm: GdmdPluginManager, ctx: BuildContext, **options: Any) -> Any:
    """The reward as a recipe builds it, with ``options`` as its table's keys."""
    if pm.get_plugin("reward-template") is None:
        pm.register(gdmd_reward_template, name="reward-template")
    return pm.registries.by_kind("reward").get("reward-template").build(options, ctx)


def test_keeps_the_reward_contract(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext
) -> None:
    assert_reward_contract(build(gdmd_pm, gdmd_build_context))


def test_the_plugin_module_imports_no_torch() -> None:
    # gdmd list-plugins imports every plugin module: it must stay cheap.
    code = (
        "import sys, gdmd_reward_template; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_images_closer_to_the_target_brightness_score_higher(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext, gdmd_prompts: list[str]
) -> None:
    reward = build(gdmd_pm, gdmd_build_context, target=0.25)
    images = torch.stack([torch.full((3, 8, 8), value) for value in (0.25, 0.5, 1.0)])
    scores = reward(images, gdmd_prompts)
    assert float(scores[0]) == 0.0
    assert bool(scores[0] > scores[1] > scores[2])
