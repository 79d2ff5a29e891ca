"""The fixed tables of a recipe, and the keys each pluggable table keeps for itself.

Every model forbids unknown keys and is strict (a TOML string is not an integer), so a typo
or a quoted number is reported instead of silently accepted. Field descriptions feed
``gdmd schema`` and ``docs/recipes.md``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

# [train] belongs to the loop; the base of every table lives beside it (see gdmd.train.config).
from gdmd.train.config import OFF_SWITCH as OFF_SWITCH
from gdmd.train.config import PositiveFloat as PositiveFloat
from gdmd.train.config import Table as Table
from gdmd.train.config import TrainConfig as TrainConfig
from gdmd.train.config import UnitFloat as UnitFloat
from gdmd.train.config import is_off_switch as is_off_switch
from gdmd.train.config import schema_allows_false


class RunConfig(Table):
    """``[run]``: naming and seeding the run."""

    name: str = Field("gdmd-run", min_length=1, description="Run name; the run directory's name.")
    seed: int = Field(0, ge=0, description="Seed of every random generator of the run.")
    output_dir: str = Field(
        "runs", min_length=1, description="Directory the run directory is created in."
    )

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, name: str) -> str:
        # The run directory is output_dir/name: a name that is a path would put it elsewhere.
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"must be a folder name, not a path, got {name!r}")
        return name


class AccelerateConfig(Table):
    """``[accelerate]``: Hugging Face accelerate settings."""

    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Mixed precision of the trained models."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches accumulated per optimiser step."
    )
    cpu: bool = Field(False, description="Run on the CPU even when a GPU is available.")


class LogConfig(Table):
    """``[log]``: metrics logging."""

    trackers: list[Literal["tensorboard", "jsonl"]] = Field(
        ["tensorboard"],
        description='Metrics trackers: "tensorboard" and/or "jsonl".',
    )
    every: int = Field(1, ge=1, description="Log metrics every N steps.")


class EvalConfig(Table):
    """``[eval]``: evaluation of the distilled student."""

    prompts_file: str | None = Field(
        None,
        min_length=1,
        description="Evaluation prompts, one per line (default: the "
        "prompt source's evaluation prompts).",
    )
    num_images: int = Field(200, ge=1, description="Images generated per seed.")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        [0], min_length=1, description="Evaluation seeds."
    )
    batch_size: int = Field(50, ge=1, description="Images generated per batch.")
    steps: int | None = Field(
        None, ge=1, description="Sampling steps (default: the student's steps)."
    )
    metrics: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="[eval.metrics.<label>] tables: registered rewards used as evaluation "
        "metrics, configured as [reward.<label>] tables are (default: the recipe's rewards).",
    )

    @model_serializer(mode="wrap")
    def _without_empty_metrics(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An empty [eval.metrics] would appear in every resolved.toml as an empty table.
        data: dict[str, Any] = handler(self)
        if not self.metrics:
            data.pop("metrics", None)
        return data


# -- the keys each pluggable table keeps for itself; every other key goes to the component.


class TeacherHead(Table):
    """``[teacher]``: the frozen many-step model (the "real score")."""

    kind: str = Field(min_length=1, description="A registered model family (gdmd list-plugins).")
    guidance_scale: float = Field(
        1.0, ge=0, description="Classifier-free guidance scale of the teacher (1: no guidance)."
    )
    guidance_jitter: float = Field(
        0.0,
        ge=0,
        description="Draw the teacher's guidance scale of each student update uniformly from "
        "guidance_scale +- this (DMDR's CFG jitter; 0: fixed).",
    )


class StudentHead(Table):
    """``[student]``: the few-step model being distilled."""

    kind: str | None = Field(
        None, min_length=1, description="A registered model family (default: the teacher's)."
    )
    init_from: Annotated[Literal["teacher"] | None, OFF_SWITCH] = Field(
        "teacher",
        json_schema_extra=schema_allows_false,
        description="\"teacher\" copies the teacher's weights; false starts from the factory's.",
    )
    steps: int = Field(4, ge=1, le=1000, description="Sampling steps of the student.")
    timesteps: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None,
        description="The student's flow times, strictly decreasing, one per step (default: "
        "evenly spaced from 1).",
    )

    def cross_problems(self) -> list[tuple[str, str]]:
        if self.timesteps is None:
            return []
        problems = []
        if len(self.timesteps) != self.steps:
            problems.append(
                ("timesteps", f"needs one value per step ({self.steps}), got {len(self.timesteps)}")
            )
        if any(a <= b for a, b in zip(self.timesteps[:-1], self.timesteps[1:], strict=True)):
            problems.append(("timesteps", f"must be strictly decreasing, got {self.timesteps}"))
        return problems


class CriticHead(Table):
    """``[critic]``: the model fitted online to the student's samples (the "fake score")."""

    kind: str | None = Field(
        None, min_length=1, description="A registered model family (default: the teacher's)."
    )
    init_from: Annotated[Literal["teacher"] | None, OFF_SWITCH] = Field(
        "teacher",
        json_schema_extra=schema_allows_false,
        description="\"teacher\" copies the teacher's weights; false starts from the factory's.",
    )


class RewardHead(Table):
    """``[reward.<label>]``: one reward model of the mix."""

    kind: str | None = Field(
        None, min_length=1, description="A registered reward (default: the table's label)."
    )
    weight: float = Field(1.0, description="Weight of this reward in the mix.")
    normalise: Literal["group", "none"] = Field(
        "group",
        description='"group": z-score the reward within each target group before mixing.',
    )


class TargetHead(Table):
    """``[target]``: the gradient-target strategy."""

    kind: str = Field("dmd", min_length=1, description="A registered target strategy.")


class PromptsHead(Table):
    """``[prompts]``: where training and evaluation prompts come from."""

    kind: str = Field(min_length=1, description="A registered prompt source.")
