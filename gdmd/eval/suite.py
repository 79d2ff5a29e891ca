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
    (:mod:`gdmd.eval.report`, :mod:`gdmd.eval.html`).

Images are generated in fixed chunks of ``batch_size`` over the ordered ``(seed, prompt)``
list, and a chunk is generated whole whenever one of its images is missing: a student's
re-noising is seeded per chunk, so a resumed evaluation makes the same images an
uninterrupted one would. Generation and scoring run in one process; prompts are not split
across processes (under ``accelerate launch`` run it as a single process).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gdmd.errors import GdmdError
from gdmd.eval.errors import SuiteError
from gdmd.eval.metrics import MetricSpec, metrics_from_recipe
from gdmd.eval.prompt_sets import EvalPrompt
from gdmd.progress import Display

if TYPE_CHECKING:
    from gdmd.eval.stats import Interval
    from gdmd.run.rundir import OpenedRun

__all__ = [
    "GENEVAL_TASKS",
    "ImageJob",
    "ModelEntry",
    "SuiteError",
    "SuiteResult",
    "image_seed",
    "run_suite",
]

#: GenEval's six tasks; its overall score is their unweighted mean (Ghosh et al., 2023).
GENEVAL_TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
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


# -- the models ----------------------------------------------------------------------------


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


# -- files ---------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``'s lines; a torn last line (an interrupted write) and
    lines that are not objects are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_png(image: torch.Tensor, path: Path) -> None:
    from gdmd.images import to_pil

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    to_pil(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def _load_png(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# -- generation ----------------------------------------------------------------------------


def _jobs(
    model: ModelEntry, prompts: Sequence[EvalPrompt], seeds: Sequence[int]
) -> list[ImageJob]:
    return [
        ImageJob(model, index, prompt, seed)
        for seed in seeds
        for index, prompt in enumerate(prompts)
    ]


def _generate_model(
    model: ModelEntry,
    jobs: list[ImageJob],
    out: Path,
    made: dict[str, str],
    opened: OpenedRun,
    *,
    batch_size: int,
    display: Display,
) -> int:
    """Generate the chunks of ``jobs`` that miss an image; returns how many images it wrote."""
    from gdmd.eval.harness import generate

    manifest = out / "images" / "manifest.jsonl"
    chunks = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    done = sum(len(c) for c in chunks if all(made.get(j.file) == j.key for j in c))
    written = 0
    with display.task(f"generating {model.label}", len(jobs), done) as update:
        for chunk in chunks:
            missing = [j for j in chunk if made.get(j.file) != j.key]
            if not missing:
                continue
            images = generate(
                opened,
                [j.prompt.prompt for j in chunk],
                [image_seed(j.index, j.seed) for j in chunk],
                model=model.model,
                steps=model.steps,
                guidance_scale=model.identity.get("guidance"),
                batch_size=len(chunk),
            )
            for job, image in zip(chunk, images, strict=True):
                if made.get(job.file) != job.key:
                    _save_png(image, out / job.file)
                    made[job.file] = job.key
                    written += 1
            _append_jsonl(manifest, ({"file": j.file, "key": j.key} for j in missing))
            done += len(chunk)
            update(done, "")
    return written


def generate_images(
    models: Sequence[ModelEntry],
    prompts: Sequence[EvalPrompt],
    seeds: Sequence[int],
    out: Path,
    open_run: Any,
    *,
    batch_size: int,
    display: Display,
) -> tuple[list[ImageJob], int, int]:
    """Make every missing image; returns every job, the images written and those reused.

    ``open_run(run_dir)`` opens a run (no rewards): it is called only for runs with a
    missing image, once per run.
    """
    (out / "images").mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    for row in _read_jsonl(out / "images" / "manifest.jsonl"):
        if isinstance(row.get("file"), str) and (out / row["file"]).is_file():
            made[row["file"]] = str(row.get("key"))
    all_jobs: list[ImageJob] = []
    written = reused = 0
    opened: dict[Path, OpenedRun] = {}
    for model in models:
        jobs = _jobs(model, prompts, seeds)
        all_jobs += jobs
        missing = [j for j in jobs if made.get(j.file) != j.key]
        reused += len(jobs) - len(missing)
        if not missing:
            display.note(f"{model.label}: all {len(jobs)} images on disk, reused")
            continue
        if model.run_dir not in opened:
            # One run open at a time: a finished run's models are freed before the next.
            opened.clear()
            with display.status(f"loading {model.run_dir}..."):
                opened[model.run_dir] = open_run(model.run_dir)
        written += _generate_model(
            model, jobs, out, made, opened[model.run_dir], batch_size=batch_size, display=display
        )
    opened.clear()
    return all_jobs, written, reused


# -- scoring -------------------------------------------------------------------------------


def _base_row(job: ImageJob) -> dict[str, Any]:
    return {
        "model": job.model.label,
        "index": job.index,
        "prompt": job.prompt.prompt,
        "category": job.prompt.category,
        "seed": job.seed,
        "file": job.file,
        "image": job.key,
        "metrics": {},
        "metric_keys": {},
    }


def _cached_scores(out: Path) -> dict[str, dict[str, Any]]:
    """``{file: {"image": key, "metrics": {...}, "metric_keys": {...}}}`` merged over the
    lines of ``index.jsonl`` (later lines win; a line of another image key resets)."""
    cache: dict[str, dict[str, Any]] = {}
    for row in _read_jsonl(out / "index.jsonl"):
        file, key = row.get("file"), row.get("image")
        metrics, keys = row.get("metrics"), row.get("metric_keys")
        if not isinstance(file, str) or not isinstance(metrics, dict):
            continue
        if not isinstance(keys, dict):
            continue
        entry = cache.get(file)
        if entry is None or entry["image"] != key:
            entry = cache[file] = {"image": key, "metrics": {}, "metric_keys": {}}
        for label, value in metrics.items():
            if isinstance(value, (int, float)) and label in keys:
                entry["metrics"][label] = float(value)
                entry["metric_keys"][label] = keys[label]
    return cache


def score_images(
    jobs: Sequence[ImageJob],
    metrics: dict[str, MetricSpec],
    out: Path,
    *,
    device: torch.device,
    batch_size: int,
    display: Display,
) -> tuple[list[dict[str, Any]], int]:
    """Every job's row with every metric's value, scoring only what ``index.jsonl`` lacks;
    returns the rows (job order) and the number of (image, metric) scores computed."""
    from gdmd.contracts import call_reward
    from gdmd.interfaces import BuildContext, WeightedReward

    cache = _cached_scores(out)
    rows: dict[str, dict[str, Any]] = {}
    for job in jobs:
        row = _base_row(job)
        entry = cache.get(job.file)
        if entry is not None and entry["image"] == job.key:
            for label, metric in metrics.items():
                if entry["metric_keys"].get(label) == metric.fingerprint:
                    row["metrics"][label] = entry["metrics"][label]
                    row["metric_keys"][label] = metric.fingerprint
        rows[job.file] = row
    computed = 0
    index_path = out / "index.jsonl"
    for label, metric in metrics.items():
        todo = [j for j in jobs if label not in rows[j.file]["metrics"]]
        if not todo:
            continue
        ctx = BuildContext(
            device=device, dtype=torch.float32, generator=torch.Generator().manual_seed(0)
        )
        with display.status(f"loading metric {label} ({metric.kind})..."):
            from gdmd.run.build import ComponentBuildError

            try:
                model = metric.build(ctx)
            except GdmdError:
                raise
            except Exception as exc:
                raise ComponentBuildError(
                    f"[metric.{label}] kind {metric.kind!r} (plugin "
                    f"{metric.component.plugin!r}) failed to build: {type(exc).__name__}: {exc}"
                ) from exc
        reward = WeightedReward(label=label, model=model, plugin=metric.component.plugin)
        total = len(jobs)
        with display.task(f"scoring {label}", total, total - len(todo)) as update:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                images = torch.stack([_load_png(out / j.file) for j in chunk]).to(device)
                with torch.no_grad():
                    values = call_reward(reward, images, [j.prompt.prompt for j in chunk])
                lines = []
                for job, value in zip(chunk, values.tolist(), strict=True):
                    row = rows[job.file]
                    row["metrics"][label] = float(value)
                    row["metric_keys"][label] = metric.fingerprint
                    lines.append(
                        dict(
                            _base_row(job),
                            metrics={label: float(value)},
                            metric_keys={label: metric.fingerprint},
                        )
                    )
                _append_jsonl(index_path, lines)
                computed += len(chunk)
                update(total - len(todo) + start + len(chunk), "")
        del model, reward
    ordered = [rows[j.file] for j in jobs]
    _write_atomic(index_path, "".join(json.dumps(r) + "\n" for r in ordered))
    return ordered, computed


# -- summaries -----------------------------------------------------------------------------


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
        by_model.setdefault(job.model.label, []).append(_load_png(out / job.file))
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


# -- the job -------------------------------------------------------------------------------


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

    ``seeds`` default to the first run's ``[eval] seeds``, ``metrics`` to its rewards,
    ``batch_size`` to its ``[eval] batch_size``. ``clip_model`` is ``(model, revision)`` for
    the Fréchet distance (default: a clip or aesthetic metric's model). ``open_run(run_dir)``
    opens a run for sampling (see :meth:`gdmd.run.rundir.RunDir.open`); ``prompt_source``
    describes the prompt file in ``eval.json`` (``path``, ``format``).
    """
    from gdmd.eval.html import report_html
    from gdmd.eval.report import suite_markdown
    from gdmd.run.rundir import default_device

    display = display or Display()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not prompts:
        raise SuiteError("the prompt set has no prompts")
    models, recipe = plan_models(run_dirs, pm, teacher=teacher, teacher_steps=teacher_steps)
    seeds = list(seeds if seeds is not None else recipe.eval.seeds)
    if not seeds or len(set(seeds)) < len(seeds):
        raise SuiteError(f"seeds must be distinct and at least one, got {seeds}")
    if metrics is None:
        metrics = metrics_from_recipe(recipe)
        if not metrics:
            raise SuiteError(
                f"{models[-1].run_dir}: the run's recipe has no [reward.<label>] table to use as "
                "a metric; pass --metrics FILE.toml"
            )
    batch = batch_size or recipe.eval.batch_size
    device = device or default_device()
    jobs, generated, reused = generate_images(
        models, prompts, seeds, out, open_run, batch_size=batch, display=display
    )
    rows, scored = score_images(
        jobs, metrics, out, device=device, batch_size=batch, display=display
    )
    source = prompt_source or {}
    is_geneval = source.get("format") == "geneval"
    summary = summarise(rows, models, metrics, geneval=is_geneval, resamples=resamples)
    if clip_model is None:
        clip_model = next((m.clip_model() for m in metrics.values() if m.clip_model()), None)
    summary["frechet"] = clip_frechet(
        jobs, models, out, clip_model, device=device, display=display
    )
    summary = {
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
        **summary,
    }
    _write_atomic(out / "eval.json", json.dumps(summary, indent=1) + "\n")
    _write_atomic(out / "eval.md", suite_markdown(summary))
    _write_atomic(out / "report.html", report_html(summary, rows))
    files = [out / "eval.json", out / "eval.md", out / "report.html", out / "index.jsonl"]
    return SuiteResult(
        out=out,
        models=models,
        metrics=metrics,
        rows=rows,
        summary=summary,
        generated=generated,
        reused=reused,
        scored=scored,
        files=files,
    )
