"""Tests of the model ``model-template``: it keeps gdmd's model contract and does its job.

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
from gdmd.testing import assert_model_contract

import gdmd_model_template

ROOT = Path(__file__).resolve().parents[1]


def build(pm: GdmdPluginManager, ctx: BuildContext, **options: Any) -> Any:
    """The model as a recipe builds it, with ``options`` as its table's keys."""
    if pm.get_plugin("model-template") is None:
        pm.register(gdmd_model_template, name="model-template")
    return pm.registries.by_kind("model").get("model-template").build(options, ctx)


def test_keeps_the_model_contract(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext
) -> None:
    assert_model_contract(build(gdmd_pm, gdmd_build_context))


def test_the_plugin_module_imports_no_torch() -> None:
    # gdmd list-plugins imports every plugin module: it must stay cheap.
    code = (
        "import sys, gdmd_model_template; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_saved_model_loads_with_the_same_predictions(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext, tmp_path: Path
) -> None:
    model = build(gdmd_pm, gdmd_build_context).eval()
    model.save_pretrained(tmp_path / "saved")
    loaded = build(gdmd_pm, gdmd_build_context, model=str(tmp_path / "saved")).eval()
    x_t, t = torch.randn(2, *model.sample_shape), torch.tensor([0.3, 0.8])
    cond = model.encode_prompts(["a red circle", "two blue squares"])
    assert torch.equal(model.predict_x0(x_t, t, cond), loaded.predict_x0(x_t, t, cond))
