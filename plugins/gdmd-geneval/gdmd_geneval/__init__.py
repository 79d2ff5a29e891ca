"""gdmd plugin: the ``geneval`` reward, GenEval's object-focused verdict (Ghosh et al., 2023).

Registering imports no torch; the detector and the colour classifier are built by
:func:`gdmd_geneval.reward.build_geneval` when a recipe uses the reward. The rules alone
(:mod:`gdmd_geneval.rules`) and the prompt parser (:mod:`gdmd_geneval.prompts`) are pure
python; :mod:`gdmd_geneval.evaluate` scores a folder of images in GenEval's layout.
"""

from __future__ import annotations

from typing import Any

import gdmd
from gdmd_geneval.config import GenEvalConfig

__version__ = "0.1.0"
#: The gdmd plugin API this plugin is written for (docs/hooks.md).
GDMD_PLUGIN_API = 1


def _build(config: GenEvalConfig, ctx: Any) -> Any:
    from gdmd_geneval.reward import build_geneval

    return build_geneval(config, ctx)


@gdmd.hookimpl
def gdmd_register_rewards(register: Any) -> None:
    """Register the ``geneval`` reward."""
    register(
        "geneval",
        _build,
        config=GenEvalConfig,
        summary="GenEval verdict: Mask2Former detections + CLIP colours judged by GenEval's "
        "rules; not differentiable",
    )
