"""Evaluating many models on a prompt set: what ``gdmd eval RUN... --prompts FILE`` does.

One job (:func:`run_suite`) takes finished runs (their students), optionally the first run's
teacher, a prompt set (:mod:`gdmd.eval.prompt_sets`), seeds and metrics
(:mod:`gdmd.eval.metrics`), and writes into one output folder:

``images/<model>/<index>-<seed>.png``
    one image per model, prompt (its position in the file) and seed. Every model draws the
    starting noise of ``(index, seed)`` from the same seed, so scores are paired.
``images/manifest.jsonl``
    which image each file is: a line per written image with its *image key*, a hash of the
    model's identity (run directory and checkpoint, or teacher model, steps and guidance),
    the prompt and the seed. An image is reused when its file exists and its key matches;
    a model whose identity changed (a newer checkpoint) is regenerated.
``index.jsonl``
    a line per image: model, prompt index, prompt, category, seed, file, and every metric's
    value, with the image key and each metric's fingerprint (kind and config). Scores are
    appended as they are computed and compacted at the end, so an interrupted evaluation
    resumes where it stopped: cached scores of the same image and metric settings are not
    recomputed, and images already made are not regenerated.
``eval.json``, ``eval.md``, ``report.html``
    means per model and category with bootstrap intervals, paired differences, a CLIP-space
    Fréchet distance to the teacher, GenEval's task accuracies
    (:mod:`gdmd.eval.summary`, :mod:`gdmd.eval.report`, :mod:`gdmd.eval.html`).

Images are generated in fixed chunks of ``batch_size`` over the ordered ``(seed, prompt)``
list, and a chunk is generated whole whenever one of its images is missing: a student's
re-noising is seeded per chunk, so a resumed evaluation makes the same images an
uninterrupted one would. Generation and scoring run in one process; prompts are not split
across processes (under ``accelerate launch`` run it as a single process).

The parts live in their own modules: the models and image jobs (:mod:`gdmd.eval.plan`),
generation and the manifest (:mod:`gdmd.eval.generation`), scoring and the index
(:mod:`gdmd.eval.scoring`), the summary (:mod:`gdmd.eval.summary`) and the files they share
(:mod:`gdmd.eval.files`); this module runs them in order and re-exports their names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gdmd.eval.errors import SuiteError
from gdmd.eval.files import write_atomic
from gdmd.eval.generation import generate_images
from gdmd.eval.metrics import MetricSpec, metrics_from_recipe
from gdmd.eval.plan import (
    TEACHER_STEPS,
    ImageJob,
    ModelEntry,
    image_jobs,
    image_seed,
    plan_models,
)
from gdmd.eval.prompt_sets import EvalPrompt
from gdmd.eval.scoring import score_images
from gdmd.eval.summary import GENEVAL_TASKS, clip_frechet, summarise
from gdmd.progress import Display

__all__ = [
    "GENEVAL_TASKS",
    "TEACHER_STEPS",
    "ImageJob",
    "ModelEntry",
    "SuiteError",
    "SuiteResult",
    "clip_frechet",
    "generate_images",
    "image_jobs",
    "image_seed",
    "plan_models",
    "run_suite",
    "score_images",
    "summarise",
]


@dataclass
class SuiteResult:
    """What :func:`run_suite` computed and wrote."""

    out: Path
    models: list[ModelEntry]
    metrics: dict[str, MetricSpec]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    generated: int = 0
    reused: int = 0
    scored: int = 0
    files: list[Path] = field(default_factory=list)


def _chosen_seeds(seeds: Sequence[int] | None, recipe: Any) -> list[int]:
    """``seeds``, else the first run's ``[eval] seeds``; distinct, at least one."""
    chosen = list(seeds if seeds is not None else recipe.eval.seeds)
    if not chosen or len(set(chosen)) < len(chosen):
        raise SuiteError(f"seeds must be distinct and at least one, got {chosen}")
    return chosen


def _chosen_metrics(
    metrics: dict[str, MetricSpec] | None, recipe: Any, models: Sequence[ModelEntry], pm: Any
) -> dict[str, MetricSpec]:
    """``metrics``, else the first run's ``[eval.metrics]`` or recipe rewards (there must be
    one)."""
    if metrics is not None:
        return metrics
    chosen = metrics_from_recipe(recipe, pm)
    if not chosen:
        raise SuiteError(
            f"{models[-1].run_dir}: the run's recipe has no [eval.metrics.<label>] or "
            "[reward.<label>] table to use as a metric; pass --metrics FILE.toml"
        )
    return chosen


def _full_summary(
    computed: dict[str, Any],
    prompts: Sequence[EvalPrompt],
    source: dict[str, Any],
    seeds: list[int],
    models: Sequence[ModelEntry],
    metrics: dict[str, MetricSpec],
) -> dict[str, Any]:
    """``eval.json``: what was evaluated (prompts, seeds, models, metrics), then
    ``computed`` (means, differences, GenEval, Fréchet distance)."""
    return {
        "prompts": {**source, "count": len(prompts)},
        "seeds": seeds,
        "models": {
            m.label: {
                "model": m.model,
                "run_dir": str(m.run_dir),
                "identity": m.identity,
                "images": f"images/{m.folder}",
            }
            for m in models
        },
        "metrics": {label: metric.describe() for label, metric in metrics.items()},
        **computed,
    }


def _write_reports(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[Path]:
    """Write ``eval.json``, ``eval.md`` and ``report.html``; return them and ``index.jsonl``."""
    from gdmd.eval.html import report_html
    from gdmd.eval.report import suite_markdown

    write_atomic(out / "eval.json", json.dumps(summary, indent=1) + "\n")
    write_atomic(out / "eval.md", suite_markdown(summary))
    write_atomic(out / "report.html", report_html(summary, rows))
    return [out / "eval.json", out / "eval.md", out / "report.html", out / "index.jsonl"]


def run_suite(
    run_dirs: Sequence[str | Path],
    prompts: Sequence[EvalPrompt],
    out: str | Path,
    pm: Any,
    *,
    open_run: Any,
    seeds: Sequence[int] | None = None,
    metrics: dict[str, MetricSpec] | None = None,
    clip_model: tuple[str, str | None] | None = None,
    teacher: bool = False,
    teacher_steps: int = TEACHER_STEPS,
    prompt_source: dict[str, Any] | None = None,
    device: torch.device | None = None,
    batch_size: int | None = None,
    display: Display | None = None,
    resamples: int = 10_000,
) -> SuiteResult:
    """Evaluate the runs' students (and with ``teacher`` the first run's teacher) on
    ``prompts`` x ``seeds`` with ``metrics``, writing everything the module docstring lists.

    ``seeds`` default to the first run's ``[eval] seeds``, ``metrics`` to its
    ``[eval.metrics]`` or else its rewards, ``batch_size`` to its ``[eval] batch_size``.
    ``clip_model`` is ``(model, revision)`` for the Fréchet distance (default: a clip or
    aesthetic metric's model). ``open_run(run_dir)`` opens a run for sampling (see
    :meth:`gdmd.run.rundir.RunDir.open`); ``prompt_source`` describes the prompt file in
    ``eval.json`` (``path``, ``format``).
    """
    from gdmd.run.rundir import default_device

    # 1. What to evaluate: the models, and the settings the first run's recipe fills in.
    display = display or Display()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not prompts:
        raise SuiteError("the prompt set has no prompts")
    models, recipe = plan_models(run_dirs, pm, teacher=teacher, teacher_steps=teacher_steps)
    chosen_seeds = _chosen_seeds(seeds, recipe)
    chosen_metrics = _chosen_metrics(metrics, recipe, models, pm)
    batch = batch_size or recipe.eval.batch_size
    device = device or default_device()
    # 2. The images, then their scores (both reuse what is on disk).
    jobs, generated, reused = generate_images(
        models, prompts, chosen_seeds, out, open_run, batch_size=batch, display=display
    )
    rows, scored = score_images(
        jobs, chosen_metrics, out, device=device, batch_size=batch, display=display
    )
    # 3. The summary: statistics, GenEval's tasks, the Fréchet distance.
    source = prompt_source or {}
    is_geneval = source.get("format") == "geneval"
    computed = summarise(rows, models, chosen_metrics, geneval=is_geneval, resamples=resamples)
    if clip_model is None:
        clip_model = next(
            (m.clip_model() for m in chosen_metrics.values() if m.clip_model()), None
        )
    computed["frechet"] = clip_frechet(
        jobs, models, out, clip_model, device=device, display=display
    )
    summary = _full_summary(computed, prompts, source, chosen_seeds, models, chosen_metrics)
    # 4. The reports.
    files = _write_reports(out, summary, rows)
    return SuiteResult(
        out=out,
        models=models,
        metrics=chosen_metrics,
        rows=rows,
        summary=summary,
        generated=generated,
        reused=reused,
        scored=scored,
        files=files,
    )
