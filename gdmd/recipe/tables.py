"""The fixed tables of a recipe, and the keys each pluggable table keeps for itself.

Every model forbids unknown keys and is strict (a TOML string is not an integer), so a typo
or a quoted number is reported instead of silently accepted. Field descriptions feed
``gdmd schema`` and ``docs/recipes.md``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _false_is_none(value: Any) -> Any:
    return None if value is False else value


def _schema_allows_false(schema: dict[str, Any]) -> None:
    schema.setdefault("anyOf", []).append({"const": False})


#: Marks a key whose default is on and which ``false`` switches off (TOML has no null):
#: ``grad_clip = false`` means "no clipping".
OFF_SWITCH = BeforeValidator(_false_is_none)


def is_off_switch(field: Any) -> bool:
    """Whether a pydantic ``FieldInfo`` is an off switch: ``false`` in TOML, ``None`` in Python."""
    return any(
        isinstance(meta, BeforeValidator) and meta.func is _false_is_none for meta in field.metadata
    )


class Table(BaseModel):
    """Base of the recipe's own tables: strict, frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)

    def cross_problems(self) -> list[tuple[str, str]]:
        """Problems involving several keys, as ``(key, message)``; empty when consistent."""
        return []


UnitFloat = Annotated[float, Field(ge=0, le=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class RunConfig(Table):
    """``[run]``: naming and seeding the run."""

    name: str = Field("gdmd-run", min_length=1, description="Run name; the run directory's name.")
    seed: int = Field(0, ge=0, description="Seed of every random generator of the run.")
    output_dir: str = Field(
        "runs", min_length=1, description="Directory the run directory is created in."
    )


class TrainConfig(Table):
    """``[train]``: the distillation loop."""

    steps: int = Field(1000, ge=1, description="Student updates.")
    batch_size: int = Field(4, ge=1, description="Prompts per student update (per process).")
    critic_steps: int = Field(
        5, ge=1, description="Critic updates per student update (DMD2's two time-scale rule)."
    )
    student_lr: float = Field(1e-5, gt=0, description="Student learning rate (AdamW).")
    critic_lr: float = Field(1e-5, gt=0, description="Critic learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of both optimisers.")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        Field((0.9, 0.999), strict=False, description="AdamW betas of both optimisers.")
    )
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    grad_clip: Annotated[float | None, OFF_SWITCH] = Field(
        10.0,
        gt=0,
        json_schema_extra=_schema_allows_false,
        description="Gradient-norm clip of both models; false turns clipping off.",
    )
    renoise_range: tuple[UnitFloat, UnitFloat] = Field(
        (0.02, 0.98),
        strict=False,
        description="[low, high] flow time the DMD and critic re-noising draws from.",
    )
    renoise_beta: tuple[PositiveFloat, PositiveFloat] | None = Field(
        None,
        strict=False,
        description="Draw the re-noise time from Beta(a, b) (DMDR's dynamic renoise) instead "
        "of uniformly.",
    )
    renoise_anneal_steps: int = Field(
        0, ge=0, description="Steps over which renoise_beta anneals to uniform (0: never)."
    )
    backward_simulation: bool = Field(
        True, description="Train a multi-step student on its own intermediate samples (DMD2)."
    )
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Keep an EMA of the student with this decay."
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Save a checkpoint every N steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    sample_every: int = Field(0, ge=0, description="Save a sample grid every N steps (0: never).")
    num_sample_prompts: int = Field(8, ge=1, description="Prompts in each sample grid.")

    def cross_problems(self) -> list[tuple[str, str]]:
        low, high = self.renoise_range
        if low >= high:
            return [("renoise_range", f"low must be below high, got [{low}, {high}]")]
        return []


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


# -- the keys each pluggable table keeps for itself; every other key goes to the component.


class TeacherHead(Table):
    """``[teacher]``: the frozen many-step model (the "real score")."""

    kind: str = Field(min_length=1, description="A registered model family (gdmd list-plugins).")
    guidance_scale: float = Field(
        1.0, ge=0, description="Classifier-free guidance scale of the teacher (1: no guidance)."
    )


class StudentHead(Table):
    """``[student]``: the few-step model being distilled."""

    kind: str | None = Field(
        None, min_length=1, description="A registered model family (default: the teacher's)."
    )
    init_from: Annotated[Literal["teacher"] | None, OFF_SWITCH] = Field(
        "teacher",
        json_schema_extra=_schema_allows_false,
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
        json_schema_extra=_schema_allows_false,
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
