"""How much a few-step student can gain: the teacher against its step count, and the
student's own few-step sampler on the unchanged teacher weights.

    python benchmarks/headroom.py RUN_DIR [--steps 2,4,8,16,50] [--seeds 0,1,2] [--json PATH]

Loads a finished run (its teacher, rewards and prompts; the trained student is not used) and
evaluates on the run's held-out prompts, each seed once, the same images for every row:

- ``teacher, N steps``: the teacher's sampler (Euler with the recipe's CFG, 2 network
  evaluations per step) for every ``N`` of ``--steps``;
- ``student sampler on the teacher``: the student's sampler (``[student] steps``, one
  evaluation per step) with the teacher's weights, the point every distillation starts from.

A benchmark can show a distillation method's gain only where the many-step teacher is clearly
above the student sampler on the teacher's own weights, and a reward-guided method's gain
only where the teacher is wrong in a way the reward measures. Prints one markdown table
(accuracy per category, every reward, FD) and, with ``--json``, writes the metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from gdmd.eval.harness import evaluate
from gdmd.manager import build_plugin_manager
from gdmd.run.rundir import RunDir


def headroom(run_dir: Path, steps: list[int], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per teacher step count, then the student sampler on the teacher's weights."""
    loaded = RunDir.existing(run_dir).open(build_plugin_manager())
    rows = []
    for n in steps:
        result, _, _ = evaluate(loaded, model="teacher", steps=n, seeds=seeds)
        rows.append({"model": f"teacher, {n} steps", "nfe": 2 * n, **result.metrics})
    at_start = dataclasses.replace(loaded, student=loaded.teacher)
    result, _, _ = evaluate(at_start, seeds=seeds)
    rows.append(
        {
            "model": "student sampler on the teacher",
            "nfe": len(loaded.student_timesteps),
            **result.metrics,
        }
    )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    skip = {"model", "nfe", "images_per_s"}
    columns = [c for c in rows[0] if c not in skip and not c.startswith("diversity/")]
    lines = [
        "| model | NFE | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = [f"{row[c]:.3f}" if c in row else "-" for c in columns]
        lines.append(f"| {row['model']} | {row['nfe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", default="2,4,8,16,50", help="teacher step counts")
    parser.add_argument("--seeds", default="0,1,2", help="noise seeds (each: every prompt once)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    try:
        steps = [int(s) for s in args.steps.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as error:
        parser.error(f"--steps and --seeds take comma-separated integers: {error}")
    if any(n < 1 for n in steps):
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if not (args.run_dir / "resolved.toml").is_file():
        parser.error(f"{args.run_dir} is not a run directory (no resolved.toml)")
    rows = headroom(args.run_dir, steps, seeds)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    sys.stdout.write(markdown(rows))


if __name__ == "__main__":
    main()
