"""The fixtures of gdmd's pytest plugin, which every plugin's test suite gets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from gdmd.interfaces import BuildContext, DiffusionModel


def test_build_context_is_cpu_float32_seeded_with_an_empty_run_dir(
    gdmd_build_context: BuildContext, tmp_path: Path
) -> None:
    ctx = gdmd_build_context
    assert (ctx.device, ctx.dtype) == (torch.device("cpu"), torch.float32)
    assert ctx.run_dir == tmp_path / "run" and list(ctx.run_dir.iterdir()) == []
    expected = torch.rand(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(4, generator=ctx.generator), expected)
    assert ctx.components == {} and ctx.accelerator is None


def test_images_are_seeded_unit_range_floats_with_one_prompt_each(
    gdmd_images: torch.Tensor, gdmd_prompts: list[str]
) -> None:
    assert gdmd_images.shape == (3, 3, 16, 16) and gdmd_images.dtype == torch.float32
    assert 0.0 <= float(gdmd_images.min()) and float(gdmd_images.max()) <= 1.0
    assert torch.equal(
        gdmd_images, torch.rand((3, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    )
    assert len(gdmd_prompts) == 3 and len(set(gdmd_prompts)) == 3


def test_tiny_teacher_is_a_small_tiny_unet_in_eval_mode(gdmd_tiny_teacher: torch.nn.Module) -> None:
    assert isinstance(gdmd_tiny_teacher, DiffusionModel)
    assert gdmd_tiny_teacher.sample_shape == (3, 8, 8)
    assert not gdmd_tiny_teacher.training
    assert sum(p.numel() for p in gdmd_tiny_teacher.parameters()) < 100_000


def test_the_pytest_plugin_and_the_package_import_no_torch() -> None:
    # The plugin loads in every pytest session where gdmd is installed.
    code = (
        "import sys, gdmd.testing, gdmd.testing.plugin; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
