"""The gdmd pytest plugin: fixtures for testing gdmd and its plugins.

Registered through the ``pytest11`` entry point, so it loads in every pytest session of an
environment where gdmd is installed; it therefore imports nothing heavy at module level.

* ``gdmd_pm``: a fresh plugin manager with gdmd's built-in plugins only (no entry points),
  so a test sees exactly the components it registers: ``gdmd_pm.register(my_plugin)``.
* ``gdmd_registries``: ``gdmd_pm.registries``.
* ``gdmd_build_context``: what a factory receives besides its config: CPU, float32, a
  generator seeded with 0, and a fresh run directory under ``tmp_path``.
* ``gdmd_images``: seeded float images ``[3, 3, 16, 16]`` in ``[0, 1]``.
* ``gdmd_prompts``: one distinct prompt per image of ``gdmd_images``.
* ``gdmd_tiny_teacher``: a small ``tiny-unet`` model (8x8 images, randomly initialised),
  built through the registry with ``gdmd_build_context``, in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

    from gdmd.interfaces import BuildContext
    from gdmd.manager import GdmdPluginManager
    from gdmd.models.tiny import TinyDiffusionModel
    from gdmd.registry import Registries

#: Options of ``gdmd_tiny_teacher``: the smallest ``tiny-unet`` that still has attention.
TINY_TEACHER_CONFIG = {
    "image_size": 8,
    "channels": [8, 16],
    "text_width": 16,
    "text_layers": 1,
    "heads": 2,
    "max_tokens": 8,
}


@pytest.fixture
def gdmd_pm() -> GdmdPluginManager:
    """A fresh plugin manager with the built-in plugins and no entry points."""
    from gdmd.manager import build_plugin_manager

    return build_plugin_manager(load_entrypoints=False)


@pytest.fixture
def gdmd_registries(gdmd_pm: GdmdPluginManager) -> Registries:
    """The registries of ``gdmd_pm`` (rebuilt if the test registers more plugins first)."""
    return gdmd_pm.registries


@pytest.fixture
def gdmd_build_context(tmp_path: Path) -> BuildContext:
    """A build context on the CPU in float32, with a generator seeded with 0 and an empty
    run directory ``tmp_path / "run"``."""
    import torch

    from gdmd.interfaces import BuildContext

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
        run_dir=run_dir,
    )


@pytest.fixture
def gdmd_images() -> torch.Tensor:
    """Three seeded random images ``[3, 3, 16, 16]``, float32 in ``[0, 1]``."""
    import torch

    return torch.rand((3, 3, 16, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def gdmd_prompts() -> list[str]:
    """Three distinct prompts, one per image of ``gdmd_images``."""
    from gdmd.testing.contracts import CONTRACT_PROMPTS

    return list(CONTRACT_PROMPTS[:3])


@pytest.fixture
def gdmd_tiny_teacher(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext
) -> TinyDiffusionModel:
    """A small randomly initialised ``tiny-unet`` (8x8 images), in eval mode."""
    spec = gdmd_pm.registries.models.get("tiny-unet")
    model: TinyDiffusionModel = spec.build(TINY_TEACHER_CONFIG, gdmd_build_context)
    return model.eval()
