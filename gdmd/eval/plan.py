"""What a prompt-set evaluation (:mod:`gdmd.eval.suite`) makes: the models it evaluates, with
the identity that says when their images must be made again, and one job per image."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdmd.eval.errors import SuiteError
from gdmd.eval.prompt_sets import EvalPrompt

#: The teacher's default sampling steps (as ``gdmd eval --teacher``).
TEACHER_STEPS = 50


def image_seed(index: int, seed: int) -> int:
    """The noise seed of prompt ``index`` under evaluation seed ``seed`` (as
    :func:`gdmd.eval.harness.evaluate` draws them)."""
    return seed * 100_003 + index


def _hash(value: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "model"


@dataclass
class ModelEntry:
    """One evaluated model: a run's student, or the first run's teacher."""

    label: str
    run_dir: Path
    model: str  # "student" or "teacher"
    identity: dict[str, Any]
    steps: int | None = None

    @property
    def key(self) -> str:
        """The hash of :attr:`identity`."""
        return _hash(self.identity)

    @property
    def folder(self) -> str:
        """The model's folder under ``images/``."""
        return _slug(self.label)


@dataclass(frozen=True)
class ImageJob:
    """One image of the evaluation: a model, a prompt (its index in the set) and a seed."""

    model: ModelEntry
    index: int
    prompt: EvalPrompt
    seed: int

    @property
    def file(self) -> str:
        """The image's path relative to the output folder."""
        return f"images/{self.model.folder}/{self.index}-{self.seed}.png"

    @property
    def key(self) -> str:
        """What makes this image: the model's identity, the prompt text and the seed."""
        return _hash([self.model.key, self.prompt.prompt, self.seed])


def image_jobs(
    model: ModelEntry, prompts: Sequence[EvalPrompt], seeds: Sequence[int]
) -> list[ImageJob]:
    """Every image of ``model``: seed by seed, each prompt in file order."""
    return [
        ImageJob(model, index, prompt, seed)
        for seed in seeds
        for index, prompt in enumerate(prompts)
    ]


def _student_identity(run_dir: Path, recipe: Any) -> dict[str, Any]:
    from gdmd.run.rundir import RunDir

    checkpoint = RunDir(run_dir).latest_checkpoint()
    if checkpoint is None:
        raise SuiteError(f"{run_dir} has no complete checkpoint to load the student from")
    info = RunDir(run_dir).info()
    return {
        "model": "student",
        "run": str(run_dir.resolve()),
        "checkpoint": checkpoint.name,
        "timesteps": info.get("student_timesteps") or recipe.student.steps,
    }


def _teacher_identity(recipe: Any, steps: int, guidance: float) -> dict[str, Any]:
    return {
        "model": "teacher",
        "kind": recipe.teacher.kind,
        "config": recipe.teacher.config.model_dump(mode="json"),
        "steps": steps,
        "guidance": guidance,
    }


def plan_models(
    run_dirs: Sequence[str | Path],
    pm: Any,
    *,
    teacher: bool,
    teacher_steps: int = TEACHER_STEPS,
    teacher_guidance: float | None = None,
) -> tuple[list[ModelEntry], Any]:
    """The models to evaluate (the teacher first, then each run's student) and the first
    run's recipe, read from the runs' ``resolved.toml`` without building any model."""
    from gdmd.run.rundir import RunDir

    if not run_dirs:
        raise SuiteError("no run directories to evaluate")
    entries: list[ModelEntry] = []
    first_recipe = None
    for position, run_dir in enumerate(run_dirs):
        rundir = RunDir.existing(run_dir)
        recipe = rundir.recipe(pm)
        if first_recipe is None:
            first_recipe = recipe
            if teacher:
                guidance = (
                    recipe.teacher.guidance_scale if teacher_guidance is None else teacher_guidance
                )
                entries.append(
                    ModelEntry(
                        label="teacher",
                        run_dir=rundir.path,
                        model="teacher",
                        identity=_teacher_identity(recipe, teacher_steps, guidance),
                        steps=teacher_steps,
                    )
                )
        label = rundir.path.resolve().name or f"run{position}"
        entries.append(
            ModelEntry(
                label=label,
                run_dir=rundir.path,
                model="student",
                identity=_student_identity(rundir.path, recipe),
            )
        )
    labels = [e.label for e in entries]
    folders = [e.folder for e in entries]
    if len(set(labels)) < len(labels) or len(set(folders)) < len(folders):
        raise SuiteError(
            "two evaluated models would share a name ("
            + ", ".join(labels)
            + "): give the run directories different folder names"
        )
    return entries, first_recipe
