"""``report.html`` of a prompt-set evaluation: one self-contained file to open from disk.

CSS and the table-sorting script are inline; bar charts are inline SVG; the images are
referenced by relative paths (``images/<model>/<index>-<seed>.png``), so the page works
opened from the evaluation folder (keep ``report.html`` beside ``images/``) and stays small
for thousands of images. Every text from a prompt file or a run is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["report_html"]

#: Bar colours, one per model (Okabe & Ito's colour-blind-safe palette).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
th.sortable { cursor: pointer; background: #f3f3f3; } th.sortable:hover { background: #e0e0e0; }
.note { color: #555; font-size: .9em; }
.prompt { border-top: 1px solid #ddd; padding: .6em 0; }
.prompt .title { font-weight: 600; } .prompt .cat { color: #666; font-weight: normal; }
.models { display: flex; flex-wrap: wrap; gap: 1em; margin-top: .4em; }
.model { border: 1px solid #ddd; padding: .4em; border-radius: 4px; }
.model .name { font-weight: 600; margin-bottom: .3em; }
.shots { display: flex; gap: .4em; }
figure { margin: 0; font-size: .75em; color: #444; }
figure img { width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated;
  display: block; background: #eee; }
svg text { font-size: 11px; fill: #333; }
.legend span { display: inline-block; margin-right: 1em; }
.legend i { display: inline-block; width: .9em; height: .9em; margin-right: .3em;
  vertical-align: middle; }
"""

_SCRIPT = """
document.querySelectorAll('table.sort').forEach(function (table) {
  table.querySelectorAll('th.sortable').forEach(function (th, column) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var up = th.getAttribute('data-dir') !== 'asc';
      th.setAttribute('data-dir', up ? 'asc' : 'desc');
      rows.sort(function (a, b) {
        var x = a.cells[column].getAttribute('data-v'), y = b.cells[column].getAttribute('data-v');
        var nx = parseFloat(x), ny = parseFloat(y);
        var d = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return up ? d : -d;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def _interval(cell: dict[str, float] | None) -> str:
    if cell is None:
        return "<td data-v=''>-</td>"
    text = f"{_num(cell['mean'])} [{_num(cell['low'])}, {_num(cell['high'])}]"
    return f"<td data-v='{cell['mean']!r}'>{escape(text)}</td>"


def _header(names: Sequence[str]) -> str:
    return "".join(f"<th class='sortable'>{escape(n)}</th>" for n in names)


def _interval_table(
    rows: Sequence[str], columns: Sequence[str], cell: Any, first: str
) -> list[str]:
    out = [f"<table class='sort'><thead><tr>{_header([first, *columns])}</tr></thead><tbody>"]
    for row in rows:
        cells = "".join(_interval(cell(row, column)) for column in columns)
        out.append(f"<tr><td class='text' data-v='{escape(row, quote=True)}'>{escape(row)}</td>")
        out.append(cells + "</tr>")
    out.append("</tbody></table>")
    return out


def _bars(metric: str, means: dict[str, dict[str, dict[str, float]]]) -> str:
    """Grouped bars (one group per category, one bar per model) with the intervals as
    whiskers, as an inline SVG."""
    models = list(means)
    groups: list[str] = []
    for row in means.values():
        groups += [g for g in row if g not in groups]
    values = [c for row in means.values() for c in row.values()]
    low = min(0.0, *(c["low"] for c in values))
    high = max(0.0, *(c["high"] for c in values))
    span = (high - low) or 1.0
    bar, gap, left, top, height = 18, 48, 64, 10, 140
    width = left + len(groups) * (len(models) * bar + gap) + 10

    def y(value: float) -> float:
        return top + height * (high - value) / span

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{top + height + 60}' "
        f"role='img' aria-label='{escape(metric, quote=True)} per category'>",
        f"<line x1='{left}' x2='{width}' y1='{y(0):.1f}' y2='{y(0):.1f}' stroke='#999'/>",
    ]
    for tick in sorted({low, 0.0, high}):
        parts.append(
            f"<text x='{left - 4}' y='{y(tick) + 4:.1f}' text-anchor='end'>{_num(tick)}</text>"
        )
    for g, group in enumerate(groups):
        x0 = left + gap / 2 + g * (len(models) * bar + gap)
        for m, model in enumerate(models):
            cell = means[model].get(group)
            if cell is None:
                continue
            x = x0 + m * bar
            y_top, y_zero = sorted((y(cell["mean"]), y(0)))
            colour = PALETTE[m % len(PALETTE)]
            title = escape(f"{model}, {group}: {_interval_text(cell)}")
            parts.append(
                f"<rect x='{x:.1f}' y='{y_top:.1f}' width='{bar - 2}' "
                f"height='{max(y_zero - y_top, 0.5):.1f}' fill='{colour}'><title>{title}</title>"
                "</rect>"
            )
            centre = x + (bar - 2) / 2
            parts.append(
                f"<line x1='{centre:.1f}' x2='{centre:.1f}' y1='{y(cell['high']):.1f}' "
                f"y2='{y(cell['low']):.1f}' stroke='#222'/>"
            )
        label_x = x0 + len(models) * bar / 2
        parts.append(
            f"<text x='{label_x:.1f}' y='{top + height + 14}' text-anchor='middle'>"
            f"{escape(group)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _interval_text(cell: dict[str, float]) -> str:
    return f"{_num(cell['mean'])} [{_num(cell['low'])}, {_num(cell['high'])}]"


def _legend(models: Sequence[str]) -> str:
    items = "".join(
        f"<span><i style='background:{PALETTE[m % len(PALETTE)]}'></i>{escape(model)}</span>"
        for m, model in enumerate(models)
    )
    return f"<p class='legend'>{items}</p>"


def report_html(summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The page: summary tables (sortable), every prompt with the models' images side by
    side and their scores, per-category bars, and a sortable table of every image."""
    models = list(summary["models"])
    metrics = list(summary["metrics"])
    prompts = summary.get("prompts", {})
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>gdmd evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>gdmd evaluation</h1>",
        f"<p>{prompts.get('count', '?')} prompts from <code>{escape(str(prompts.get('path')))}"
        f"</code> (format {escape(str(prompts.get('format')))}), seeds "
        f"{escape(str(summary['seeds']))}; models: {escape(', '.join(models))}.</p>",
        "<p class='note'>Cells are mean [low, high]: a 95 % bootstrap interval that resamples "
        "prompts. Click a column header to sort. Images are files beside this page "
        "(<code>images/</code>): keep the folder together.</p>",
        "<h2>Means</h2>",
    ]
    means = summary["means"]
    out += _interval_table(models, metrics, lambda r, c: means[c][r].get("all"), "model")
    differences = summary.get("differences", {})
    if differences:
        pairs = list(next(iter(differences.values())))
        out.append("<h2>Paired differences</h2>")
        out.append(
            "<p class='note'>Over the same prompts and seeds; an interval that excludes 0 is "
            "resolved by this prompt set.</p>"
        )
        out += _interval_table(
            pairs, metrics, lambda r, c: differences[c][r].get("all"), "difference"
        )
    for metric, table in summary.get("geneval", {}).items():
        tasks: list[str] = []
        for scores in table.values():
            tasks += [t for t in scores["tasks"] if t not in tasks]
        out.append(f"<h2>GenEval ({escape(metric)})</h2><table class='sort'><thead><tr>")
        out.append(_header(["model", "overall", *tasks]) + "</tr></thead><tbody>")
        for model, scores in table.items():
            cells = "".join(
                f"<td data-v='{scores['tasks'][t]!r}'>{_num(scores['tasks'][t])}</td>"
                if t in scores["tasks"]
                else "<td data-v=''>-</td>"
                for t in tasks
            )
            out.append(
                f"<tr><td class='text' data-v='{escape(model, quote=True)}'>{escape(model)}</td>"
                f"<td data-v='{scores['overall']!r}'>{_num(scores['overall'])}</td>{cells}</tr>"
            )
        out.append("</tbody></table>")
    frechet = summary.get("frechet") or {}
    out.append("<h2>Fréchet distance to the teacher (CLIP space)</h2>")
    if "values" in frechet:
        out.append(
            f"<p class='note'>Embeddings of <code>{escape(frechet['clip_model'])}</code>; not "
            "FID; lower is closer to the teacher.</p><table><tr><th>model</th><th>distance</th>"
            "</tr>"
        )
        for model, value in frechet["values"].items():
            out.append(f"<tr><td>{escape(model)}</td><td>{_num(value)}</td></tr>")
        out.append("</table>")
    else:
        out.append(f"<p class='note'>Skipped: {escape(str(frechet.get('skipped')))}.</p>")
    out += _gallery(rows, models, metrics)
    out.append("<h2>Per category</h2>")
    out.append(_legend(models))
    for metric in metrics:
        out.append(f"<h3>{escape(metric)}</h3>{_bars(metric, means[metric])}")
    out += _image_table(rows, metrics)
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"


def _gallery(
    rows: Sequence[dict[str, Any]], models: Sequence[str], metrics: Sequence[str]
) -> list[str]:
    by_prompt: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        by_prompt.setdefault(int(row["index"]), {}).setdefault(row["model"], []).append(row)
    out = ["<h2>Prompts</h2>"]
    for index in sorted(by_prompt):
        first = next(iter(by_prompt[index].values()))[0]
        category = f" <span class='cat'>({escape(str(first['category']))})</span>" if (
            first["category"] is not None
        ) else ""
        out.append(
            f"<div class='prompt' id='prompt-{index}'><div class='title'>{index}. "
            f"{escape(first['prompt'])}{category}</div><div class='models'>"
        )
        for model in models:
            shots = []
            for row in sorted(by_prompt[index].get(model, []), key=lambda r: int(r["seed"])):
                scores = "<br>".join(
                    f"{escape(m)} {_num(row['metrics'].get(m))}" for m in metrics
                )
                shots.append(
                    f"<figure><img src='{escape(row['file'], quote=True)}' alt='"
                    f"{escape(model, quote=True)}, seed {row['seed']}' loading='lazy'>"
                    f"<figcaption>seed {row['seed']}<br>{scores}</figcaption></figure>"
                )
            out.append(
                f"<div class='model'><div class='name'>{escape(model)}</div>"
                f"<div class='shots'>{''.join(shots)}</div></div>"
            )
        out.append("</div></div>")
    return out


def _image_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[str]:
    out = [
        "<h2>Every image</h2><table class='sort'><thead><tr>",
        _header(["prompt", "category", "model", "seed", *metrics]) + "</tr></thead><tbody>",
    ]
    for row in rows:
        text = escape(f"{row['index']}. {row['prompt']}")
        category = escape(str(row["category"] or ""))
        cells = "".join(
            f"<td data-v='{row['metrics'][m]!r}'>{_num(row['metrics'][m])}</td>" for m in metrics
        )
        out.append(
            f"<tr><td class='text' data-v='{row['index']}'><a href='{escape(row['file'], True)}'>"
            f"{text}</a></td><td class='text' data-v='{category}'>{category}</td>"
            f"<td class='text' data-v='{escape(row['model'], True)}'>{escape(row['model'])}</td>"
            f"<td data-v='{row['seed']}'>{row['seed']}</td>{cells}</tr>"
        )
    out.append("</tbody></table>")
    return out
