"""The resolved recipe: every table validated, every ``kind`` resolved to its component.

:class:`Recipe` holds one validated config per table; ``Recipe.to_toml()`` writes it back
with every default filled in (a run's ``resolved.toml``), and loading that text gives the
same recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import tomli_w
from pydantic import BaseModel

from gdmd import __version__
from gdmd.config import ComponentConfig
from gdmd.errors import GdmdError
from gdmd.recipe.tables import (
    AccelerateConfig,
    EvalConfig,
    LogConfig,
    RunConfig,
    TrainConfig,
    is_off_switch,
)
from gdmd.registry import ComponentSpec

#: The tables a recipe may have, in the order ``to_toml`` writes them.
TABLES = (
    "run",
    "teacher",
    "student",
    "critic",
    "reward",
    "target",
    "prompts",
    "train",
    "accelerate",
    "log",
    "eval",
)
REQUIRED_TABLES = ("teacher", "prompts")


@dataclass(frozen=True, kw_only=True)
class ComponentChoice:
    """A pluggable table resolved: the registered ``component`` and its validated ``config``."""

    kind: str
    config: ComponentConfig
    component: ComponentSpec

    def build(self, ctx: Any) -> Any:
        """Build the component: ``component.factory(config, ctx)``."""
        return self.component.build(self.config, ctx)


@dataclass(frozen=True, kw_only=True)
class ModelSpec(ComponentChoice):
    """A model in one of the three roles."""

    role: ClassVar[Literal["teacher", "student", "critic"]]


@dataclass(frozen=True, kw_only=True)
class TeacherSpec(ModelSpec):
    role: ClassVar[Literal["teacher"]] = "teacher"
    guidance_scale: float
    guidance_jitter: float = 0.0


@dataclass(frozen=True, kw_only=True)
class StudentSpec(ModelSpec):
    role: ClassVar[Literal["student"]] = "student"
    init_from: Literal["teacher"] | None
    steps: int
    #: As written in the recipe; ``None``: ``steps`` evenly spaced times, placed by the
    #: model's schedule (``gdmd.run.build.student_timesteps``).
    timesteps: tuple[float, ...] | None


@dataclass(frozen=True, kw_only=True)
class CriticSpec(ModelSpec):
    role: ClassVar[Literal["critic"]] = "critic"
    init_from: Literal["teacher"] | None


@dataclass(frozen=True, kw_only=True)
class RewardSpec(ComponentChoice):
    """``[reward.<label>]``: a reward model, its weight in the mix and its normalisation."""

    label: str
    weight: float
    normalise: Literal["group", "none"]


@dataclass(frozen=True, kw_only=True)
class TargetSpec(ComponentChoice):
    """``[target]``: the gradient-target strategy."""


@dataclass(frozen=True, kw_only=True)
class PromptsSpec(ComponentChoice):
    """``[prompts]``: the prompt source."""


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Components get only their own ``config``, never the recipe."""

    source: Path | None
    run: RunConfig
    teacher: TeacherSpec
    student: StudentSpec
    critic: CriticSpec
    rewards: dict[str, RewardSpec]
    target: TargetSpec
    prompts: PromptsSpec
    train: TrainConfig
    accelerate: AccelerateConfig
    log: LogConfig
    eval: EvalConfig
    #: The tables written in the source (after overrides), e.g. ``("run", "reward.clip")``.
    declared_tables: tuple[str, ...] = field(default=(), compare=False)

    def components(self) -> dict[str, ComponentChoice]:
        """Every pluggable table, by table name: ``teacher``, ``reward.<label>``, ..."""
        choices: dict[str, ComponentChoice] = {
            "teacher": self.teacher,
            "student": self.student,
            "critic": self.critic,
        }
        choices.update({f"reward.{label}": spec for label, spec in self.rewards.items()})
        choices.update({"target": self.target, "prompts": self.prompts})
        return choices

    def to_dict(self) -> dict[str, Any]:
        """The recipe as TOML-ready data with every default filled in."""
        rewards = {
            label: {
                "kind": spec.kind,
                "weight": spec.weight,
                "normalise": spec.normalise,
                **_dump(spec.config, f"reward.{label}"),
            }
            for label, spec in self.rewards.items()
        }
        student: dict[str, Any] = {
            "kind": self.student.kind,
            "init_from": self.student.init_from or False,
            "steps": self.student.steps,
        }
        if self.student.timesteps is not None:
            student["timesteps"] = list(self.student.timesteps)
        data: dict[str, Any] = {
            "run": _dump(self.run, "run"),
            "teacher": {
                "kind": self.teacher.kind,
                "guidance_scale": self.teacher.guidance_scale,
                # Written only when set, so resolved files without jitter stay as they were.
                **(
                    {"guidance_jitter": self.teacher.guidance_jitter}
                    if self.teacher.guidance_jitter
                    else {}
                ),
                **_dump(self.teacher.config, "teacher"),
            },
            "student": {**student, **_dump(self.student.config, "student")},
            "critic": {
                "kind": self.critic.kind,
                "init_from": self.critic.init_from or False,
                **_dump(self.critic.config, "critic"),
            },
        }
        if rewards:
            data["reward"] = rewards
        data["target"] = {"kind": self.target.kind, **_dump(self.target.config, "target")}
        data["prompts"] = {"kind": self.prompts.kind, **_dump(self.prompts.config, "prompts")}
        for name in ("train", "accelerate", "log", "eval"):
            data[name] = _dump(getattr(self, name), name)
        return data

    def to_toml(self) -> str:
        """The recipe as TOML with every default filled in; loads back to the same recipe."""
        origin = f" from {self.source}" if self.source else ""
        header = f"# Resolved by gdmd {__version__}{origin}: every default filled in.\n\n"
        return header + tomli_w.dumps(self.to_dict())

    def summary(self) -> str:
        """One line: ``8 tables, target gdmd, teacher tiny-unet, ...``."""
        rewards = ", ".join(
            f"{spec.kind}" + (f" ({label})" if label != spec.kind else "")
            for label, spec in self.rewards.items()
        )
        parts = [
            f"{len(self.declared_tables)} tables",
            f"target {self.target.kind}",
            f"teacher {self.teacher.kind}",
            f"student {self.student.kind} ({self.student.steps} steps)",
            f"critic {self.critic.kind}",
            f"rewards {rewards}" if rewards else "no rewards",
            f"prompts {self.prompts.kind}",
        ]
        return ", ".join(parts)


def _dump(model: BaseModel, table: str) -> dict[str, Any]:
    """A model as TOML data. TOML has no null: a ``None`` whose default is ``None`` is left
    out, an off switch's ``None`` is written ``false``."""
    data = model.model_dump(mode="json", by_alias=True)
    for name, info in type(model).model_fields.items():
        key = info.alias or name
        if data.get(key, 0) is not None:
            continue
        if is_off_switch(info):
            data[key] = False
        elif info.default is None:
            del data[key]
        else:
            raise GdmdError(
                f"[{table}] {key} is None, which TOML cannot express; give the field an off "
                "switch or a None default"
            )
    return _drop_nested_none(data)


def _drop_nested_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nested_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nested_none(v) for v in value]
    return value

