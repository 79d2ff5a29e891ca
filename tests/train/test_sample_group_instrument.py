"""The target instrument's group of samples (``--group samples``) runs on a tiny run and
reports every scored tensor, with within-prompt statistics."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from gdmd.recipe import load_recipe
from gdmd.run.build import build_components

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _diagnostics():
    spec = importlib.util.spec_from_file_location(
        "_bench_target_diagnostics", BENCHMARKS / "target_diagnostics.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_sample_group_mode_reports_every_scored_tensor(gdmd_pm, write_recipe) -> None:
    diagnostics = _diagnostics()
    recipe = load_recipe(write_recipe(), gdmd_pm)
    parts = build_components(recipe)
    for model in (parts.teacher, parts.student, parts.critic):
        model.eval()
        model.requires_grad_(False)
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows, scale = diagnostics.diagnose_sample_group(
            recipe, parts, prompts, k=4, seed=0, resamples=20
        )
    finally:
        torch.set_num_threads(previous)
    scored = ["sample", "x - g", "x - 0.25 g", "x - (x0_fake - x0_real)"]
    assert [(r["layout"], r["scored"]) for r in rows] == [("-", "sample")] + [
        (layout, name) for layout in diagnostics.LAYOUTS for name in scored[1:]
    ]
    for row in rows:
        for key in ("reward", "accuracy", "auc_in_group", "pairs_in_group", "sd_in_group"):
            assert key in row, key
        assert np.isfinite(row["reward"]) and 0.0 <= row["accuracy"] <= 1.0
        assert 0 <= row["pairs_in_group"] <= len(prompts) * 4 * 4 // 4  # at most K^2/4 a prompt
    assert set(scale) == set(diagnostics.LAYOUTS)
    assert all(v["mean |g|"] > 0 for v in scale.values())
    # One time per prompt with "shared": nothing left for t to explain.
    shared = [r for r in rows if r["layout"] == "shared"]
    assert all(np.isnan(r["r2_t"]) for r in shared)
