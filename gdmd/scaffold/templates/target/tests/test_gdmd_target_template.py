"""Tests of the target ``target-template``: it keeps gdmd's target contract and does its job.

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
from gdmd.testing import assert_target_contract

import gdmd_target_template

ROOT = Path(__file__).resolve().parents[1]


def build(pm: GdmdPluginManager, ctx: BuildContext, **options: Any) -> Any:
    """The target as a recipe builds it, with ``options`` as its table's keys."""
    if pm.get_plugin("target-template") is None:
        pm.register(gdmd_target_template, name="target-template")
    return pm.registries.by_kind("target").get("target-template").build(options, ctx)


def test_keeps_the_target_contract(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext
) -> None:
    assert_target_contract(build(gdmd_pm, gdmd_build_context))


def test_the_plugin_module_imports_no_torch() -> None:
    # gdmd list-plugins imports every plugin module: it must stay cheap.
    code = (
        "import sys, gdmd_target_template; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


class Pixels:
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents + 1) / 2


def test_every_target_gets_the_configured_weight(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext
) -> None:
    from gdmd.interfaces import TargetContext
    from gdmd.schedules import FlowMatchingSchedule

    target = build(gdmd_pm, gdmd_build_context, weight=0.5)
    x = torch.zeros(2, 3, 4, 4)
    generator = torch.Generator().manual_seed(0)
    cond = {"tokens": torch.zeros(2, 1)}
    ctx = TargetContext(
        x=x,
        prompts=["a", "b"],
        cond_real=cond,
        cond_fake=cond,
        schedule=FlowMatchingSchedule(),
        real_x0=lambda x_t, t, c: 0.5 * x_t,
        fake_x0=lambda x_t, t, c, snapshot: 0.25 * x_t,
        num_critic_snapshots=0,
        sample_t=lambda n: torch.full((n,), 0.5),
        decoder=Pixels(),
        rewards=[],
        generator=generator,
        step=0,
    )
    out = target(ctx)
    assert out.targets.shape == (2, 1, 3, 4, 4)
    assert torch.equal(out.weights, torch.full((2, 1), 0.5))
