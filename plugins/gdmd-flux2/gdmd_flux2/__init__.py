"""gdmd plugin: the ``flux2`` model family (FLUX.2 [klein] through diffusers).

Registering imports no torch and no diffusers; :func:`gdmd_flux2.loading.build_flux2` loads
the pipeline when a recipe builds a model.
"""

from __future__ import annotations

from typing import Any

import gdmd
from gdmd.registry import Register
from gdmd_flux2.config import Flux2Config

__version__ = "0.1.0"
#: The gdmd plugin API this plugin is written for (docs/hooks.md).
GDMD_PLUGIN_API = 1


def _build(config: Flux2Config, ctx: Any) -> Any:
    from gdmd_flux2.loading import build_flux2

    return build_flux2(config, ctx)


@gdmd.hookimpl
def gdmd_register_models(register: Register) -> None:
    """Register the ``flux2`` model family (roles: teacher, student, critic)."""
    register(
        "flux2",
        _build,
        config=Flux2Config,
        summary="FLUX.2 [klein] base (diffusers Flux2KleinPipeline), full or LoRA fine-tuning",
        roles=("teacher", "student", "critic"),
    )
