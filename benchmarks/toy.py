"""The toy benchmark: every toy recipe over several seeds, the comparison table, curves, grids.

    python benchmarks/toy.py [--seeds 0,1,2] [--steps N] [--recipes gdmd,dmd,...] [--out DIR]
                             [--jobs J] [--eval-seeds 0,1,2]

Runs each recipe in ``recipes/toy/`` (same teacher, reward, budget and seeds; only
``[target]`` differs) through ``gdmd run``, evaluates every checkpoint on the held-out prompts
(curves) and the final student with every seed of ``[eval]``, evaluates the teacher at its
many-step setting, and writes ``docs/benchmarks/toy.md`` (mean ± std over seeds),
``toy.json``, ``toy_curves.png`` (held-out accuracy and reward against student updates) and
``toy_samples.png`` (every model on the same prompts and seeds); copy the table into
``docs/benchmarks.md`` with the command used.

Training runs ``--jobs`` at a time (default: one per two CPU cores), each with an equal share
of the cores as torch threads and its output in ``OUT/<run>.log``; the teacher and reward are
built (trained and cached on first use) once before they start. A finished run is reused
(``--resume auto``), so an interrupted benchmark picks up where it stopped. Evaluation runs
afterwards, one model at a time. About an hour on a 2-core CPU with the default settings.
Checked end to end with ``--seeds 0 --steps 2 --recipes dmd,gdmd --teacher-steps 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def run_command(recipe: str, seed: int, steps: int | None, output: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "gdmd",
        "run",
        str(ROOT / "recipes" / "toy" / f"{recipe}.toml"),
        "--set",
        f"run.seed={seed}",
        "--set",
        f"run.name={recipe}-s{seed}",
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
    return cmd


def train_all(
    runs: list[tuple[str, int]], steps: int | None, output: Path, jobs: int
) -> dict[tuple[str, int], Path]:
    """Train every (recipe, seed), ``jobs`` at a time; returns their run directories."""
    output.mkdir(parents=True, exist_ok=True)
    # Build (and cache) teacher and reward once, so parallel runs do not all train them.
    first_recipe, first_seed = runs[0]
    subprocess.run([*run_command(first_recipe, first_seed, steps, output), "--dry-run"], check=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def one(recipe: str, seed: int) -> Path:
        name = f"{recipe}-s{seed}"
        log = output / f"{name}.log"
        sys.stderr.write(f"training {name} (log: {log})\n")
        with log.open("w") as handle:
            done = subprocess.run(
                run_command(recipe, seed, steps, output),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed with exit code {done.returncode}; see {log}")
        sys.stderr.write(f"finished {name}\n")
        return output / name

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {key: pool.submit(one, *key) for key in runs}
        return {key: future.result() for key, future in futures.items()}


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
    parser.add_argument(
        "--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="parallel runs"
    )
    parser.add_argument(
        "--eval-seeds", default="0,1,2", help="image seeds per evaluated model (held-out prompts)"
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    seeds = [int(s) for s in args.seeds.split(",")]
    eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
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
    run_dirs = train_all([(r, s) for r in recipes for s in seeds], args.steps, out, args.jobs)
    for recipe in recipes:
        for seed in seeds:
            run_dir = run_dirs[(recipe, seed)]
            curve = []
            for step, path in complete_checkpoints(run_dir / "checkpoints"):
                loaded = load_run(run_dir, pm, checkpoint=path)
                result, _, _ = evaluate(loaded, seeds=[0], num_images=120)
                curve.append((step, result.metrics["accuracy"], result.metrics["reward/alignment"]))
            curves.setdefault(recipe, []).append(curve)
            loaded = load_run(run_dir, pm)
            result, images, prompts = evaluate(loaded, seeds=eval_seeds)
            results.setdefault(recipe, []).append(result.metrics)
            if seed == seeds[0]:
                grids[recipe] = images[:8]
                shown = prompts[:8]
            if not teacher_row and recipe == recipes[0]:
                teacher, timages, _ = evaluate(
                    loaded, model="teacher", steps=args.teacher_steps, seeds=eval_seeds
                )
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
