"""Reports of evaluated models: the terminal table, ``eval.json``, ``eval.md`` and the
comparison grid ``gdmd eval`` writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
