"""Reports of evaluated models: the terminal table, ``eval.json``, ``eval.md`` and the
comparison grid ``gdmd eval`` writes, and the markdown of a prompt-set evaluation
(:func:`suite_markdown`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from rich.table import Table

    from gdmd.eval.harness import EvalResult


def metric_names(results: Sequence[EvalResult]) -> list[str]:
    """Every metric of any result, in the order they first appear."""
    names: list[str] = []
    for r in results:
        names += [k for k in r.metrics if k not in names]
    return names


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def results_markdown(results: Sequence[EvalResult]) -> str:
    """A markdown comparison table (one row per result, one column per metric)."""
    columns = metric_names(results)
    header = "| model | steps | images | " + " | ".join(columns) + " |"
    rule = "|---|---:|---:|" + "---:|" * len(columns)
    rows = [
        f"| {r.label} | {r.steps} | {r.num_images} | "
        + " | ".join(_fmt(r.metrics.get(c)) for c in columns)
        + " |"
        for r in results
    ]
    return "\n".join([header, rule, *rows]) + "\n"


def results_table(results: Sequence[EvalResult]) -> Table:
    """The terminal table: one column per model, one row per metric (readable at 80 columns)."""
    from rich import box
    from rich.table import Table

    table = Table(title="evaluation", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("metric", style="bold")
    for r in results:
        table.add_column(r.label, justify="right")
    table.add_row("steps", *(str(r.steps) for r in results))
    table.add_row("images", *(str(r.num_images) for r in results))
    for metric in metric_names(results):
        table.add_row(
            metric,
            *(f"{r.metrics[metric]:.4g}" if metric in r.metrics else "-" for r in results),
        )
    return table


def write_report(
    folder: Path,
    results: Sequence[EvalResult],
    rows: Sequence[tuple[str, torch.Tensor]],
    prompts: Sequence[str],
) -> list[Path]:
    """Write ``eval.json``, ``eval.md`` and ``comparison.png`` (one row of images per
    model, the same prompts and seeds in every row) into ``folder``; return their paths."""
    import torch

    from gdmd.images import save_grid

    folder.mkdir(parents=True, exist_ok=True)
    grid = torch.cat([images for _, images in rows])
    save_grid(
        grid,
        folder / "comparison.png",
        list(prompts) * len(rows),
        ncol=len(prompts),
        upscale=4,
        row_labels=[label for label, _ in rows],
    )
    (folder / "eval.json").write_text(json.dumps([r.to_json() for r in results], indent=1) + "\n")
    (folder / "eval.md").write_text(results_markdown(results))
    return [folder / "eval.json", folder / "eval.md", folder / "comparison.png"]


def _interval_text(cell: dict[str, float] | None) -> str:
    if cell is None:
        return "-"
    return f"{_fmt(cell['mean'])} [{_fmt(cell['low'])}, {_fmt(cell['high'])}]"


def _groups_of(table: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    groups: list[str] = []
    for row in table.values():
        groups += [g for g in row if g not in groups]
    return groups


def suite_markdown(summary: dict[str, Any]) -> str:
    """``eval.md`` of a prompt-set evaluation (:func:`gdmd.eval.suite.run_suite`): the
    tables of ``eval.json``, each cell ``mean [low, high]`` (95 % bootstrap over prompts)."""
    prompts = summary.get("prompts", {})
    models = list(summary["models"])
    metrics = list(summary["metrics"])
    where = prompts.get("path", "the prompt set")
    lines = [
        "# Evaluation",
        "",
        f"{prompts.get('count', '?')} prompts from `{where}` "
        f"(format {prompts.get('format', '?')}), seeds {summary['seeds']}; "
        f"models: {', '.join(models)}. Cells: mean [low, high], a 95 % bootstrap interval "
        "that resamples prompts.",
    ]
    lines += _means_markdown(summary, models, metrics)
    lines += _differences_markdown(summary, metrics)
    lines += _categories_markdown(summary, models, metrics)
    lines += _geneval_markdown(summary)
    lines += _frechet_markdown(summary)
    return "\n".join(lines) + "\n"


def _means_markdown(summary: dict[str, Any], models: list[str], metrics: list[str]) -> list[str]:
    lines = [
        "",
        "## Means",
        "",
        "| model | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for model in models:
        cells = [_interval_text(summary["means"][m][model].get("all")) for m in metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _differences_markdown(summary: dict[str, Any], metrics: list[str]) -> list[str]:
    differences = summary.get("differences", {})
    if not differences:
        return []
    pairs = list(next(iter(differences.values())))
    lines = [
        "",
        "## Paired differences",
        "",
        "Per (prompt, seed), over the same prompts and starting noise; an interval that "
        "excludes 0 is a difference this prompt set resolves.",
        "",
        "| difference | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for pair in pairs:
        cells = [_interval_text(differences[m][pair].get("all")) for m in metrics]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return lines


def _categories_markdown(
    summary: dict[str, Any], models: list[str], metrics: list[str]
) -> list[str]:
    lines: list[str] = []
    for metric in metrics:
        groups = [g for g in _groups_of(summary["means"][metric]) if g != "all"]
        if not groups:
            continue
        lines += [
            "",
            f"## {metric} per category",
            "",
            "| model | " + " | ".join(groups) + " |",
            "|---|" + "---:|" * len(groups),
        ]
        for model in models:
            row = summary["means"][metric][model]
            lines.append(
                f"| {model} | " + " | ".join(_interval_text(row.get(g)) for g in groups) + " |"
            )
    return lines


def _geneval_markdown(summary: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for metric, table in summary.get("geneval", {}).items():
        tasks = _task_names(table)
        lines += [
            "",
            f"## GenEval ({metric})",
            "",
            "Overall: the unweighted mean of the task accuracies.",
            "",
            "| model | overall | " + " | ".join(tasks) + " |",
            "|---|---:|" + "---:|" * len(tasks),
        ]
        for model, scores in table.items():
            cells = [_fmt(scores["tasks"].get(t)) for t in tasks]
            lines.append(f"| {model} | {_fmt(scores['overall'])} | " + " | ".join(cells) + " |")
    return lines


def _frechet_markdown(summary: dict[str, Any]) -> list[str]:
    frechet = summary.get("frechet") or {}
    lines = ["", "## Fréchet distance to the teacher (CLIP space)", ""]
    if "values" not in frechet:
        return [*lines, f"Skipped: {frechet.get('skipped', 'not computed')}."]
    lines += [
        f"Image embeddings of `{frechet['clip_model']}`; not FID, lower is closer.",
        "",
        "| model | distance |",
        "|---|---:|",
    ]
    return lines + [f"| {model} | {_fmt(value)} |" for model, value in frechet["values"].items()]


def _task_names(table: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for scores in table.values():
        names += [t for t in scores["tasks"] if t not in names]
    return names


def suite_table(summary: dict[str, Any]) -> Table:
    """The terminal table of a prompt-set evaluation: one row per metric, one column per
    model, each cell ``mean [low, high]``."""
    from rich import box
    from rich.table import Table

    models = list(summary["models"])
    table = Table(
        title="evaluation: mean [95 % interval]", title_justify="left", box=box.SIMPLE_HEAD
    )
    table.add_column("metric", style="bold")
    for model in models:
        table.add_column(model, justify="right")
    for metric, by_model in summary["means"].items():
        table.add_row(metric, *(_interval_text(by_model[m].get("all")) for m in models))
    return table


def difference_table(summary: dict[str, Any]) -> Table | None:
    """The terminal table of the paired differences (one column per pair), or ``None``
    when a single model was evaluated."""
    from rich import box
    from rich.table import Table

    differences = summary.get("differences", {})
    if not differences:
        return None
    pairs = list(next(iter(differences.values())))
    table = Table(
        title="paired differences: mean [95 % interval]",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("metric", style="bold")
    for pair in pairs:
        table.add_column(pair, justify="right")
    for metric, by_pair in differences.items():
        table.add_row(metric, *(_interval_text(by_pair[p].get("all")) for p in pairs))
    return table
