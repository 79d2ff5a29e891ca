"""Making a prompt-set evaluation's images (:mod:`gdmd.eval.suite`): ``images/<model>/`` and
``images/manifest.jsonl``, the record of which image key each file holds.

Images are generated in fixed chunks of ``batch_size`` over a model's ordered
``(seed, prompt)`` jobs, and a chunk is generated whole whenever one of its images is missing:
a student's re-noising is seeded per chunk, so a resumed evaluation makes the same images an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdmd.eval.files import append_jsonl, read_jsonl, save_png
from gdmd.eval.plan import ImageJob, ModelEntry, image_jobs, image_seed
from gdmd.eval.prompt_sets import EvalPrompt
from gdmd.progress import Display

if TYPE_CHECKING:
    from gdmd.run.rundir import OpenedRun


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
                    save_png(image, out / job.file)
                    made[job.file] = job.key
                    written += 1
            append_jsonl(manifest, ({"file": j.file, "key": j.key} for j in missing))
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
    for row in read_jsonl(out / "images" / "manifest.jsonl"):
        if isinstance(row.get("file"), str) and (out / row["file"]).is_file():
            made[row["file"]] = str(row.get("key"))
    all_jobs: list[ImageJob] = []
    written = reused = 0
    opened: dict[Path, OpenedRun] = {}
    for model in models:
        jobs = image_jobs(model, prompts, seeds)
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
