"""Scoring a prompt-set evaluation's images (:mod:`gdmd.eval.suite`): ``index.jsonl``, a line
per image with every metric's value, the image key and each metric's fingerprint.

Scores are appended as they are computed and compacted at the end, so an interrupted
evaluation resumes where it stopped: cached scores of the same image and metric settings are
not recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gdmd.errors import GdmdError
from gdmd.eval.files import append_jsonl, load_png, read_jsonl, write_atomic
from gdmd.eval.metrics import MetricSpec
from gdmd.eval.plan import ImageJob
from gdmd.progress import Display


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
    for row in read_jsonl(out / "index.jsonl"):
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


def _build_metric(
    label: str, metric: MetricSpec, device: torch.device, display: Display
) -> Any:
    """The metric's reward model on ``device``; a plugin's failure names the metric table."""
    from gdmd.interfaces import BuildContext

    ctx = BuildContext(
        device=device, dtype=torch.float32, generator=torch.Generator().manual_seed(0)
    )
    with display.status(f"loading metric {label} ({metric.kind})..."):
        from gdmd.run.build import ComponentBuildError

        try:
            return metric.build(ctx)
        except GdmdError:
            raise
        except Exception as exc:
            raise ComponentBuildError(
                f"[metric.{label}] kind {metric.kind!r} (plugin "
                f"{metric.component.plugin!r}) failed to build: {type(exc).__name__}: {exc}"
            ) from exc


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
    from gdmd.interfaces import WeightedReward

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
        model = _build_metric(label, metric, device, display)
        reward = WeightedReward(label=label, model=model, plugin=metric.component.plugin)
        total = len(jobs)
        with display.task(f"scoring {label}", total, total - len(todo)) as update:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                images = torch.stack([load_png(out / j.file) for j in chunk]).to(device)
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
                append_jsonl(index_path, lines)
                computed += len(chunk)
                update(total - len(todo) + start + len(chunk), "")
        del model, reward
    ordered = [rows[j.file] for j in jobs]
    write_atomic(index_path, "".join(json.dumps(r) + "\n" for r in ordered))
    return ordered, computed
