"""Building a run's parts from its recipe: the only place that reads the whole recipe.

Each component receives its own validated config and a :class:`~gdmd.interfaces.BuildContext`.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from gdmd.errors import GdmdError, RecipeError
from gdmd.interfaces import BuildContext, WeightedReward
from gdmd.train.config import LoopSettings
from gdmd.train.distributed import wants_cpu
from gdmd.train.state import Components

#: Every role :func:`build_components` can build, in the order it builds them.
ROLES: tuple[str, ...] = ("prompts", "teacher", "student", "critic", "rewards", "target")

#: What opening a finished run for sampling needs (``gdmd sample``, ``gdmd export``).
SAMPLING_ROLES = frozenset({"prompts", "teacher", "student"})


class ComponentBuildError(GdmdError):
    """A component's factory failed; the message names the recipe table and plugin."""

    exit_code = 2


def run_dir_of(recipe: Any) -> Path:
    """``output_dir / name``, unchecked (:meth:`gdmd.run.rundir.RunDir.for_recipe` checks)."""
    return Path(recipe.run.output_dir) / recipe.run.name


def _build(table: str, spec: Any, ctx: BuildContext) -> Any:
    component = spec.component
    ctx.plugin = component.plugin
    try:
        return spec.build(ctx)
    except GdmdError:
        raise
    except Exception as exc:
        raise ComponentBuildError(
            f"[{table}] kind {spec.kind!r} (plugin {component.plugin!r}) failed to build: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def build_components(
    recipe: Any,
    accelerator: Accelerator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    roles: Collection[str] = ROLES,
) -> Components:
    """Build the prompt source, teacher, student, critic, rewards and target strategy.

    The prompt source comes first: it is cheap and the most likely to be wrong (a missing
    prompt file), so a bad one fails before minutes of model loading. The student and critic
    are built from the teacher (``init_from = "teacher"``): their factory receives it as
    ``ctx.components["init_from"]``.

    ``device`` defaults to the accelerator's (CPU without one), ``dtype`` to float32 (what
    ``BuildContext.dtype`` tells a factory; a family may keep its own). ``roles`` names what to
    build (see :data:`ROLES`): a role left out is ``None`` in the result, so opening a finished
    run never builds a critic, and sampling builds no rewards. The student needs the teacher.
    """
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; known: {', '.join(ROLES)}")
    if "student" in roles or "critic" in roles:
        roles = {*roles, "teacher"}
    if device is None:
        device = accelerator.device if accelerator is not None else torch.device("cpu")
    device = torch.device(device)

    def context(**components: Any) -> BuildContext:
        # Each component gets its own generator, seeded from the run seed and its role, so
        # adding a reward does not change how the student is initialised.
        role = str(components.get("role", ""))
        seed = (recipe.run.seed * 1_000_003 + sum(map(ord, role))) % (2**63)
        return BuildContext(
            device=device,
            dtype=dtype or torch.float32,
            generator=torch.Generator().manual_seed(seed),
            run_dir=run_dir_of(recipe),
            accelerator=accelerator,
            components=components,
        )

    parts: dict[str, Any] = dict.fromkeys(ROLES)
    if "prompts" in roles:
        parts["prompts"] = _build("prompts", recipe.prompts, context(role="prompts"))
    if "teacher" in roles:
        teacher = _build("teacher", recipe.teacher, context(role="teacher"))
        teacher.requires_grad_(False)
        teacher.eval()
        parts["teacher"] = teacher
    for role in ("student", "critic"):
        if role in roles:
            spec = getattr(recipe, role)
            extra: dict[str, Any] = {"role": role}
            if spec.init_from == "teacher":
                extra["init_from"] = parts["teacher"]
            parts[role] = _build(role, spec, context(**extra))
    if "rewards" in roles:
        parts["rewards"] = [
            WeightedReward(
                label=label,
                model=_build(f"reward.{label}", spec, context(role=f"reward.{label}")),
                weight=spec.weight,
                normalise=spec.normalise,
                plugin=spec.component.plugin,
            )
            for label, spec in recipe.rewards.items()
        ]
    if "target" in roles:
        parts["target"] = _build("target", recipe.target, context(role="target"))
        _check_target_rewards(recipe, parts["target"], parts["rewards"] or [])
    return Components(**parts)


def _check_target_rewards(recipe: Any, target: Any, rewards: list[WeightedReward]) -> None:
    problems = []
    if getattr(target, "needs_differentiable_reward", False):
        for reward in rewards:
            if not getattr(reward.model, "differentiable", False):
                problems.append(
                    f"{recipe.source or 'recipe'}: [reward.{reward.label}] kind: target "
                    f"{recipe.target.kind!r} back-propagates through its rewards, but reward "
                    f"{recipe.rewards[reward.label].kind!r} is not differentiable"
                )
    if getattr(target, "needs_rewards", False) and not recipe.rewards:
        problems.append(
            f"{recipe.source or 'recipe'}: [target] kind: {recipe.target.kind!r} needs at least "
            "one [reward.<label>] table"
        )
    if problems:
        raise RecipeError(problems)


def student_timesteps(recipe: Any, schedule: Any) -> list[float]:
    """The student's fixed times: the recipe's, or ``steps`` evenly spaced ones placed by the
    schedule (SD3's timestep shift, for instance)."""
    from gdmd.sampling import default_timesteps

    if recipe.student.timesteps is not None:
        return [float(t) for t in recipe.student.timesteps]
    return [float(t) for t in default_timesteps(recipe.student.steps, schedule).tolist()]


def loop_settings(recipe: Any, schedule: Any) -> LoopSettings:
    """What the loop reads: the recipe's ``[train]`` as it is, plus what other tables decide."""
    return LoopSettings(
        train=recipe.train,
        student_timesteps=student_timesteps(recipe, schedule),
        guidance_scale=recipe.teacher.guidance_scale,
        guidance_jitter=recipe.teacher.guidance_jitter,
        seed=recipe.run.seed,
        log_every=recipe.log.every,
        gradient_accumulation_steps=recipe.accelerate.gradient_accumulation_steps,
    )


def make_accelerator(recipe: Any, run_dir: Path | None) -> Accelerator:
    """The run's accelerator; trackers other than ``jsonl`` only when it has a directory."""
    trackers = [t for t in recipe.log.trackers if t != "jsonl"] if run_dir is not None else []
    return Accelerator(
        mixed_precision=recipe.accelerate.mixed_precision,
        cpu=wants_cpu(recipe.accelerate.cpu),
        log_with=trackers or None,
        project_dir=str(run_dir) if run_dir is not None else None,
    )


#: ``[accelerate] mixed_precision`` -> the dtype a finished run samples in by default.
MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run_dtype(recipe: Any) -> torch.dtype:
    """The dtype the run computed in: its mixed precision, float32 without."""
    return MIXED_PRECISION_DTYPES.get(str(recipe.accelerate.mixed_precision), torch.float32)
