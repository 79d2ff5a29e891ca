"""The JSON Schema (draft 2020-12) of a recipe, for editors and ``gdmd schema``.

Fixed tables come from their pydantic models. A pluggable table lists its own keys and the
registered kinds; for each kind an ``if``/``then`` adds that component's config keys and
forbids any other key.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gdmd import __version__
from gdmd.recipe.loader import REQUIRED_TABLES, TABLES
from gdmd.recipe.tables import (
    AccelerateConfig,
    CriticHead,
    EvalConfig,
    LogConfig,
    PromptsHead,
    RewardHead,
    RunConfig,
    StudentHead,
    TargetHead,
    TeacherHead,
    TrainConfig,
)
from gdmd.registry import ComponentSpec, Registries

if TYPE_CHECKING:
    from gdmd.manager import GdmdPluginManager

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_FIXED: dict[str, type[BaseModel]] = {
    "run": RunConfig,
    "train": TrainConfig,
    "accelerate": AccelerateConfig,
    "log": LogConfig,
    "eval": EvalConfig,
}
_HEADS: tuple[type[BaseModel], ...] = (
    TeacherHead,
    StudentHead,
    CriticHead,
    RewardHead,
    TargetHead,
    PromptsHead,
)


def recipe_json_schema(registries: Registries | GdmdPluginManager) -> dict[str, Any]:
    """The JSON Schema of a recipe whose kinds resolve through ``registries``."""
    if not isinstance(registries, Registries):
        registries = registries.registries
    configs = sorted(
        {spec.config for spec in registries}, key=lambda c: (c.__module__, c.__qualname__)
    )
    models = [*_FIXED.values(), *_HEADS, *configs]
    refs, top = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/$defs/{model}"
    )
    defs: dict[str, Any] = top.get("$defs", {})

    def definition(model: type[BaseModel]) -> dict[str, Any]:
        return defs[refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1]]

    def pluggable(
        head: type[BaseModel],
        specs: Iterable[ComponentSpec],
        *,
        default_kind: str | None = None,
        config_required: bool = True,
    ) -> dict[str, Any]:
        head_def = definition(head)
        head_props = head_def["properties"]
        specs = list(specs)
        kind = {
            "type": "string",
            "enum": [spec.name for spec in specs],
            "description": head_props["kind"].get("description", ""),
        }
        if default_kind is not None:
            kind["default"] = default_kind
        branches = []
        for spec in specs:
            config = definition(spec.config)
            condition: dict[str, Any] = {"properties": {"kind": {"const": spec.name}}}
            if spec.name != default_kind:
                condition["required"] = ["kind"]
            then: dict[str, Any] = {
                "properties": {**head_props, **copy.deepcopy(config.get("properties", {}))},
                "additionalProperties": False,
            }
            if config_required and config.get("required"):
                then["required"] = list(config["required"])
            branches.append({"if": condition, "then": then})
        schema: dict[str, Any] = {
            "type": "object",
            "description": head_def.get("description", ""),
            "properties": {**head_props, "kind": kind},
        }
        if "kind" in head_def.get("required", []):
            schema["required"] = ["kind"]
        if branches:
            schema["allOf"] = branches
        return schema

    def models_for(role: str) -> list[ComponentSpec]:
        return [spec for spec in registries.models if role in spec.roles]

    properties: dict[str, Any] = {
        "run": refs[(RunConfig, "validation")],
        "teacher": pluggable(TeacherHead, models_for("teacher")),
        # A student or critic of the teacher's kind inherits the teacher's keys, so the
        # component's required keys may be absent here.
        "student": pluggable(StudentHead, models_for("student"), config_required=False),
        "critic": pluggable(CriticHead, models_for("critic"), config_required=False),
        "reward": {
            "type": "object",
            "description": "Reward models by label: [reward.<label>].",
            "additionalProperties": pluggable(RewardHead, registries.rewards),
        },
        "target": pluggable(
            TargetHead, registries.targets, default_kind=TargetHead.model_fields["kind"].default
        ),
        "prompts": pluggable(PromptsHead, registries.prompts),
    }
    for name, model in _FIXED.items():
        properties[name] = refs[(model, "validation")]
    for head in _HEADS:  # inlined above; nothing refers to them
        defs.pop(refs[(head, "validation")]["$ref"].rsplit("/", 1)[-1], None)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "gdmd recipe",
        "description": f"A gdmd {__version__} recipe (TOML). See docs/recipes.md.",
        "type": "object",
        "properties": {name: properties[name] for name in TABLES},
        "required": list(REQUIRED_TABLES),
        "additionalProperties": False,
        "$defs": defs,
    }
