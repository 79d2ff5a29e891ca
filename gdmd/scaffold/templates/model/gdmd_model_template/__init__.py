"""gdmd-model-template: a gdmd plugin that registers the model ``model-template``.

gdmd imports this module through the ``gdmd`` entry point in pyproject.toml. Keep it cheap to
import (``gdmd list-plugins`` imports every plugin): the model and torch are imported by the
factory, when a recipe builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gdmd
from gdmd.config import ComponentConfig
from pydantic import Field

if TYPE_CHECKING:
    from gdmd.interfaces import BuildContext
    from gdmd.registry import Register

    from gdmd_model_template.model import ModelTemplateModel

#: The gdmd plugin API this plugin is written for (gdmd.PLUGIN_API_VERSION).
GDMD_PLUGIN_API = 1


class ModelTemplateConfig(ComponentConfig):
    """Options of the ``model-template`` model family: keys of ``[teacher]``, ``[student]``,
    ``[critic]``."""

    model: str | None = Field(
        None, description="Directory written by save_pretrained; unset: random weights."
    )
    image_size: int = Field(8, ge=2, description="Side of the square RGB images, in pixels.")
    width: int = Field(16, ge=1, description="Channels of the hidden layer.")
    buckets: int = Field(256, ge=1, description="Hash buckets for prompt words.")


def build_model(config: ModelTemplateConfig, ctx: BuildContext) -> ModelTemplateModel:
    """A copy of ``ctx.components["init_from"]`` (a student or critic initialised from the
    teacher), the model saved at ``config.model``, or random weights drawn from
    ``ctx.generator``; on ``ctx.device``."""
    import copy

    import torch

    from gdmd_model_template.model import ModelTemplateModel

    init_from = ctx.components.get("init_from")
    if isinstance(init_from, ModelTemplateModel):
        return copy.deepcopy(init_from).requires_grad_(True).train().to(ctx.device)
    if config.model is not None:
        return ModelTemplateModel.from_pretrained(config.model).to(ctx.device)
    seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator, device=ctx.generator.device))
    # Initialise from ctx.generator's draw without touching the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        model = ModelTemplateModel(config.image_size, config.width, config.buckets)
    return model.to(ctx.device)


@gdmd.hookimpl
def gdmd_register_models(register: Register) -> None:
    register(
        "model-template",
        build_model,
        config=ModelTemplateConfig,
        summary="A small pixel-space flow-matching model (gdmd-model-template).",
        roles=("teacher", "student", "critic"),
    )
