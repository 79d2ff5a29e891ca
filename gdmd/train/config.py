"""The loop's configuration: the recipe's ``[train]`` table and the settings the loop runs with.

:class:`TrainConfig` is the ``[train]`` table; the loop owns it, and :mod:`gdmd.recipe` imports
it from here. :class:`LoopSettings` is what :func:`gdmd.train.loop.train` receives: the
validated ``[train]`` table itself plus the few values that come from other tables. Imports
no torch, so validating a recipe and ``gdmd --help`` stay fast.

The base of every fixed recipe table (:class:`Table`) and the ``false``-means-off marker
(:data:`OFF_SWITCH`) live here too, because the recipe's tables import ``[train]`` from this
module and this module must not import :mod:`gdmd.recipe` back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _false_is_none(value: Any) -> Any:
    return None if value is False else value


def schema_allows_false(schema: dict[str, Any]) -> None:
    """JSON-schema hook of an :data:`OFF_SWITCH` key: ``false`` is a valid value."""
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
        json_schema_extra=schema_allows_false,
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


@dataclass
class LoopSettings:
    """What :func:`gdmd.train.loop.train` runs with: the ``[train]`` table as validated (the
    loop reads ``settings.train.<key>``), plus the values other tables decide."""

    train: TrainConfig
    #: The student's fixed sampling times, first (most noise) to last.
    student_timesteps: list[float]
    #: The teacher's classifier-free guidance scale (``[teacher] guidance_scale``).
    guidance_scale: float
    #: ``[run] seed``: every random draw of the loop derives from it.
    seed: int
    #: ``[log] every``: write a metrics line every N steps (and at the last step).
    log_every: int
    #: ``[accelerate] gradient_accumulation_steps``: micro-batches per optimizer step.
    gradient_accumulation_steps: int = 1
    #: ``[teacher] guidance_jitter``: each student update guides the teacher with a scale drawn
    #: uniformly from ``guidance_scale`` +- this (0: always ``guidance_scale``).
    guidance_jitter: float = 0.0
