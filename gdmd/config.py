"""The base class of every component's own config model.

A component (model family, reward, target strategy, prompt source) declares its options as a
subclass of :class:`ComponentConfig`. The recipe loader validates the component's table
against it, so unknown keys, wrong types and out-of-range values are reported with the file,
table and key. Imports no torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ComponentConfig(BaseModel):
    """Options of one component. Subclass it and declare fields with defaults and docs.

    Use ``pydantic.Field(ge=..., le=..., description=...)`` for ranges and documentation; the
    descriptions appear in ``gdmd schema`` and in the recipe reference.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class EmptyConfig(ComponentConfig):
    """The config of a component that has no options."""
