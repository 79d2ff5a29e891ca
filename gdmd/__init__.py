"""gdmd: reward-guided diffusion distillation.

The public surface kept importable without torch: the hook marker for plugin authors and
the version. Everything heavy lives in submodules that are imported on use.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: The plugin API version; raised when a hook gains a required behaviour.
PLUGIN_API_VERSION = 1

#: Marker for hook implementations: ``@gdmd.hookimpl def gdmd_register_rewards(register): ...``
hookimpl = pluggy.HookimplMarker("gdmd")

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl"]
