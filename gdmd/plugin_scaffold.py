"""Where ``gdmd plugin new`` used to live; it is :mod:`gdmd.scaffold` now.

Re-exports its public names so that ``from gdmd.plugin_scaffold import ...`` keeps working.
"""

from __future__ import annotations

from gdmd.scaffold import PluginKind, ScaffoldError, plugin_app, scaffold_plugin

__all__ = ["PluginKind", "ScaffoldError", "plugin_app", "scaffold_plugin"]
