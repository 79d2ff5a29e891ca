"""The toy benchmark: every toy recipe over several seeds, the comparison table, curves, grids.

    python benchmarks/toy.py [--seeds 0,1,2] [--steps N] [--recipes gdmd,dmd,...] [--out DIR]

Runs each recipe in ``recipes/toy/`` (same teacher, reward, budget and seeds; only
``[target]`` differs) through ``gdmd run``, evaluates every checkpoint on the held-out prompts
(curves) and the final student with every seed of ``[eval]``, evaluates the teacher at its
many-step setting, and writes ``docs/benchmarks/toy.md`` (mean ± std over seeds),
``toy.json``, ``toy_curves.png`` (held-out accuracy and reward against student updates) and
``toy_samples.png`` (every model on the same prompts and seeds); copy the table into
``docs/benchmarks.md`` with the command used. Runs one at a time; about an hour on a 2-core
CPU with the default settings. Checked end to end with
``--seeds 0 --steps 2 --recipes dmd,gdmd --teacher-steps 5``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from gdmd.eval.harness import evaluate, load_run
from gdmd.images import save_grid
from gdmd.manager import build_plugin_manager
from gdmd.train.checkpoint import complete_checkpoints

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["gdmd", "gdmd_fake", "gdmd_both", "dmd", "dmdr", "reward_weighted"]
COLUMNS = [
    "accuracy",
    "accuracy/single",
    "accuracy/counting",
    "accuracy/two_objects",
    "accuracy/colour_attribution",
    "accuracy/position",
    "reward/alignment",
    "fd",
    "diversity",
]


def run(recipe: str, seed: int, steps: int | None, output: Path) -> Path:
    name = f"{recipe}-s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "gdmd",
        "run",
        str(ROOT / "recipes" / "toy" / f"{recipe}.toml"),
        "--set",
        f"run.seed={seed}",
        "--set",
        f"run.name={name}",
        "--set",
        f"run.output_dir={output}",
        "--resume",
        "auto",
    ]
    if steps is not None:
        cmd += [
            "--set",
            f"train.steps={steps}",
            "--set",
            f"train.checkpoint_every={max(1, steps // 3)}",
        ]
    subprocess.run(cmd, check=True)
    return output / name


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="override [train] steps")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--out", default=str(ROOT / "runs" / "toy-benchmark"))
    parser.add_argument("--teacher-steps", type=int, default=50)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = args.recipes.split(",")
    out = Path(args.out)
    docs = ROOT / "docs" / "benchmarks"
    docs.mkdir(parents=True, exist_ok=True)
    pm = build_plugin_manager()

    results: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[list[tuple[int, float, float]]]] = {}
    grids: dict[str, torch.Tensor] = {}
    shown: list[str] = []
    teacher_row: list[dict[str, float]] = []
    for recipe in recipes:
        for seed in seeds:
            run_dir = run(recipe, seed, args.steps, out)
            curve = []
            for step, path in complete_checkpoints(run_dir / "checkpoints"):
                loaded = load_run(run_dir, pm, checkpoint=path)
                result, _, _ = evaluate(loaded, seeds=[0], num_images=120)
                curve.append((step, result.metrics["accuracy"], result.metrics["reward/alignment"]))
            curves.setdefault(recipe, []).append(curve)
            loaded = load_run(run_dir, pm)
            result, images, prompts = evaluate(loaded)
            results.setdefault(recipe, []).append(result.metrics)
            if seed == seeds[0]:
                grids[recipe] = images[:8]
                shown = prompts[:8]
            if not teacher_row and recipe == recipes[0]:
                teacher, timages, _ = evaluate(loaded, model="teacher", steps=args.teacher_steps)
                teacher_row.append(teacher.metrics)
                grids = {"teacher": timages[:8], **grids}

    header = "| model | NFE | " + " | ".join(COLUMNS) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(COLUMNS)]
    lines.append(
        f"| teacher (Euler, CFG) | {2 * args.teacher_steps} | "
        + " | ".join(f"{teacher_row[0].get(c, float('nan')):.3f}" for c in COLUMNS)
        + " |"
    )
    for recipe, rows in results.items():
        cells = [mean_std([r[c] for r in rows if c in r]) for c in COLUMNS]
        lines.append(f"| {recipe.replace('_', '-')} 4-step | 4 | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (docs / "toy.md").write_text(table)
    (docs / "toy.json").write_text(
        json.dumps({"teacher": teacher_row, "students": results, "curves": curves}, indent=1)
    )
    order = list(grids)
    save_grid(
        torch.cat([grids[k] for k in order]),
        docs / "toy_samples.png",
        shown * len(order),
        ncol=len(shown),
        upscale=4,
        row_labels=order,
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for recipe, runs in curves.items():
            for i, curve in enumerate(runs):
                steps_, acc, rew = zip(*curve, strict=True) if curve else ((), (), ())
                label = recipe if i == 0 else None
                axes[0].plot(
                    steps_, acc, marker="o", label=label, color=f"C{recipes.index(recipe)}"
                )
                axes[1].plot(
                    steps_, rew, marker="o", label=label, color=f"C{recipes.index(recipe)}"
                )
        axes[0].axhline(teacher_row[0]["accuracy"], color="k", ls="--", label="teacher")
        axes[1].axhline(teacher_row[0]["reward/alignment"], color="k", ls="--", label="teacher")
        axes[0].set(xlabel="student updates", ylabel="checker accuracy (held-out)")
        axes[1].set(xlabel="student updates", ylabel="alignment reward (held-out)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "toy_curves.png", dpi=100)
    except ImportError:
        pass
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
