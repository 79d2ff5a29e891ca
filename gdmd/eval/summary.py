"""The numbers of a prompt-set evaluation (:mod:`gdmd.eval.suite`) that go into ``eval.json``:
means per model and category with bootstrap intervals, paired differences, GenEval's task
accuracies and a CLIP-space Fréchet distance to the teacher."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gdmd.eval.files import load_png
from gdmd.eval.metrics import MetricSpec
from gdmd.eval.plan import ImageJob, ModelEntry
from gdmd.progress import Display

if TYPE_CHECKING:
    from gdmd.eval.stats import Interval

#: GenEval's six tasks; its overall score is their unweighted mean (Ghosh et al., 2023).
GENEVAL_TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _interval_json(interval: Interval) -> dict[str, Any]:
    return {
        "mean": interval.mean,
        "low": interval.low,
        "high": interval.high,
        "level": interval.level,
        "prompts": interval.num_prompts,
        "images": interval.num_images,
    }


def summarise(
    rows: Sequence[dict[str, Any]],
    models: Sequence[ModelEntry],
    metrics: dict[str, MetricSpec],
    *,
    geneval: bool,
    resamples: int = 10_000,
) -> dict[str, Any]:
    """Means per model and category, paired differences (each student − the teacher, each
    student − each later student) and GenEval's task accuracies, as JSON-ready dicts."""
    from gdmd.eval.stats import model_means, paired_differences

    categories: dict[str, str | None] = {}
    for row in rows:
        categories[str(row["index"])] = row["category"]
    students = [m.label for m in models if m.model == "student"]
    teachers = [m.label for m in models if m.model == "teacher"]
    pairs = [(s, t) for s in students for t in teachers]
    pairs += [(a, b) for i, a in enumerate(students) for b in students[i + 1 :]]
    means: dict[str, Any] = {}
    differences: dict[str, Any] = {}
    for label in metrics:
        scores: dict[str, dict[tuple[str, int], float]] = {m.label: {} for m in models}
        for row in rows:
            scores[row["model"]][(str(row["index"]), int(row["seed"]))] = row["metrics"][label]
        table = model_means(scores, categories, resamples=resamples)
        means[label] = {
            model: {group: _interval_json(i) for group, i in groups.items()}
            for model, groups in table.items()
        }
        if pairs:
            diffs = paired_differences(scores, pairs, categories, resamples=resamples)
            differences[label] = {
                pair: {group: _interval_json(i) for group, i in groups.items()}
                for pair, groups in diffs.items()
            }
    summary: dict[str, Any] = {"means": means, "differences": differences}
    geneval_metrics = [label for label, m in metrics.items() if m.kind == "geneval"]
    if geneval and geneval_metrics:
        summary["geneval"] = {
            label: {m.label: _geneval_scores(means[label][m.label]) for m in models}
            for label in geneval_metrics
        }
    return summary


def _geneval_scores(groups: dict[str, Any]) -> dict[str, Any]:
    tasks = {t: groups[t]["mean"] for t in GENEVAL_TASKS if t in groups}
    missing = [t for t in GENEVAL_TASKS if t not in groups]
    overall = sum(tasks.values()) / len(tasks) if tasks else math.nan
    return {"overall": overall, "tasks": tasks, "missing_tasks": missing}


def clip_frechet(
    jobs: Sequence[ImageJob],
    models: Sequence[ModelEntry],
    out: Path,
    source: tuple[str, str | None] | None,
    *,
    device: torch.device,
    display: Display,
) -> dict[str, Any]:
    """The CLIP-space Fréchet distance of each student's images to the teacher's, or why it
    was skipped (no teacher, no CLIP model configured, fewer than two images a model)."""
    teacher = next((m for m in models if m.model == "teacher"), None)
    if teacher is None:
        return {"skipped": "no teacher evaluated (pass --teacher)"}
    if source is None:
        return {
            "skipped": "no CLIP model configured ([frechet] clip_model, or a clip or "
            "aesthetic metric)"
        }
    from gdmd.eval.frechet import clip_frechet_distance
    from gdmd.rewards.aesthetic import load_clip_image_embedder

    by_model: dict[str, list[torch.Tensor]] = {}
    for job in jobs:
        by_model.setdefault(job.model.label, []).append(load_png(out / job.file))
    if len(by_model[teacher.label]) < 2:
        return {"skipped": "the Fréchet distance needs at least two images a model"}
    model, revision = source
    with display.status(f"loading {model} for the Fréchet distance..."):
        embedder = load_clip_image_embedder(
            model, who="the Fréchet distance", revision=revision, device=device
        )
    values = {
        m.label: clip_frechet_distance(by_model[m.label], by_model[teacher.label], embedder)
        for m in models
        if m.model == "student"
    }
    return {"clip_model": model, "reference": teacher.label, "values": values}
