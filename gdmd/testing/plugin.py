"""The gdmd pytest plugin: fixtures for testing gdmd and its plugins.

Registered through the ``pytest11`` entry point, so it loads in every pytest session of an
environment where gdmd is installed; it therefore imports nothing heavy at module level.

* ``gdmd_pm``: a fresh plugin manager with gdmd's built-in plugins only (no entry points),
  so a test sees exactly the components it registers: ``gdmd_pm.register(MyPlugin())``.
* ``gdmd_registries``: ``gdmd_pm.registries``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gdmd.manager import GdmdPluginManager
    from gdmd.registry import Registries


@pytest.fixture
def gdmd_pm() -> GdmdPluginManager:
    """A fresh plugin manager with the built-in plugins and no entry points."""
    from gdmd.manager import build_plugin_manager

    return build_plugin_manager(load_entrypoints=False)


@pytest.fixture
def gdmd_registries(gdmd_pm: GdmdPluginManager) -> Registries:
    """The registries of ``gdmd_pm`` (rebuilt if the test registers more plugins first)."""
    return gdmd_pm.registries
