"""The JSON Schema (draft 2020-12) of a recipe, for editors and ``gdmd schema``.

Fixed tables come from their pydantic models. A pluggable table lists its own keys and the
registered kinds; for each kind an ``if``/``then`` adds that component's config keys and
forbids any other key.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, JsonSchemaValue, models_json_schema

from gdmd import __version__
from gdmd.recipe.resolved import REQUIRED_TABLES, TABLES
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


@dataclass(frozen=True)
class _Definitions:
    """The JSON Schemas of the recipe's pydantic models: ``$ref`` objects and ``$defs``."""

    refs: Mapping[tuple[Any, JsonSchemaMode], JsonSchemaValue]
    defs: dict[str, Any]

    @classmethod
    def of(cls, models: Iterable[type[BaseModel]]) -> _Definitions:
        refs, top = models_json_schema(
            [(model, "validation") for model in models], ref_template="#/$defs/{model}"
        )
        return cls(refs=refs, defs=top.get("$defs", {}))

    def ref(self, model: type[BaseModel]) -> dict[str, Any]:
        """``{"$ref": "#/$defs/<name>"}`` of ``model``."""
        ref: dict[str, Any] = self.refs[(model, "validation")]
        return ref

    def name(self, model: type[BaseModel]) -> str:
        """The key of ``model``'s schema in ``$defs``."""
        return str(self.ref(model)["$ref"].rsplit("/", 1)[-1])

    def definition(self, model: type[BaseModel]) -> dict[str, Any]:
        """``model``'s schema in ``$defs``."""
        definition: dict[str, Any] = self.defs[self.name(model)]
        return definition


def recipe_json_schema(registries: Registries | GdmdPluginManager) -> dict[str, Any]:
    """The JSON Schema of a recipe whose kinds resolve through ``registries``."""
    if not isinstance(registries, Registries):
        registries = registries.registries
    configs = sorted(
        {spec.config for spec in registries}, key=lambda c: (c.__module__, c.__qualname__)
    )
    definitions = _Definitions.of([*_FIXED.values(), *_HEADS, *configs])
    properties = _table_properties(definitions, registries)
    for head in _HEADS:  # inlined by _pluggable; nothing refers to them
        definitions.defs.pop(definitions.name(head), None)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "gdmd recipe",
        "description": f"A gdmd {__version__} recipe (TOML). See docs/recipes.md.",
        "type": "object",
        "properties": {name: properties[name] for name in TABLES},
        "required": list(REQUIRED_TABLES),
        "additionalProperties": False,
        "$defs": definitions.defs,
    }


def _table_properties(definitions: _Definitions, registries: Registries) -> dict[str, Any]:
    """The schema of every table, by table name (in no particular order)."""

    def models_for(role: str) -> list[ComponentSpec]:
        return [spec for spec in registries.models if role in spec.roles]

    properties: dict[str, Any] = {
        "run": definitions.ref(RunConfig),
        "teacher": _pluggable(definitions, TeacherHead, models_for("teacher")),
        # A student or critic of the teacher's kind inherits the teacher's keys, so the
        # component's required keys may be absent here.
        "student": _pluggable(
            definitions, StudentHead, models_for("student"), config_required=False
        ),
        "critic": _pluggable(definitions, CriticHead, models_for("critic"), config_required=False),
        "reward": {
            "type": "object",
            "description": "Reward models by label: [reward.<label>].",
            "additionalProperties": _pluggable(definitions, RewardHead, registries.rewards),
        },
        "target": _pluggable(
            definitions,
            TargetHead,
            registries.targets,
            default_kind=TargetHead.model_fields["kind"].default,
        ),
        "prompts": _pluggable(definitions, PromptsHead, registries.prompts),
    }
    for name, model in _FIXED.items():
        properties[name] = definitions.ref(model)
    return properties


def _pluggable(
    definitions: _Definitions,
    head: type[BaseModel],
    specs: Iterable[ComponentSpec],
    *,
    default_kind: str | None = None,
    config_required: bool = True,
) -> dict[str, Any]:
    """A pluggable table: its head's keys, ``kind`` among ``specs``, one branch per kind."""
    head_def = definitions.definition(head)
    head_props = head_def["properties"]
    specs = list(specs)
    kind = {
        "type": "string",
        "enum": [spec.name for spec in specs],
        "description": head_props["kind"].get("description", ""),
    }
    if default_kind is not None:
        kind["default"] = default_kind
    branches = [
        _kind_branch(definitions, spec, head_props, default_kind, config_required)
        for spec in specs
    ]
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


def _kind_branch(
    definitions: _Definitions,
    spec: ComponentSpec,
    head_props: dict[str, Any],
    default_kind: str | None,
    config_required: bool,
) -> dict[str, Any]:
    """``if kind is spec.name then`` the head's and the component's keys, and no other."""
    config = definitions.definition(spec.config)
    condition: dict[str, Any] = {"properties": {"kind": {"const": spec.name}}}
    if spec.name != default_kind:
        condition["required"] = ["kind"]
    then: dict[str, Any] = {
        "properties": {**head_props, **copy.deepcopy(config.get("properties", {}))},
        "additionalProperties": False,
    }
    if config_required and config.get("required"):
        then["required"] = list(config["required"])
    return {"if": condition, "then": then}
