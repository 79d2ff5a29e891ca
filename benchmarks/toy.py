"""The toy benchmark: every toy recipe over several seeds, the comparison table, curves, grids.

    python benchmarks/toy.py [--seeds 0,1,2] [--steps N] [--recipes gdmd,dmd,...] [--out DIR]
                             [--jobs J] [--threads T] [--eval-seeds 0,1,2] [--tag NAME]

Runs each recipe in ``recipes/toy/`` (same teacher, reward, budget and seeds; only
``[target]`` differs) through ``gdmd run``, evaluates every checkpoint on the held-out prompts
(curves) and the final student with every seed of ``[eval]``, evaluates the teacher at its
many-step setting, and writes ``docs/benchmarks/toy.md`` (mean ± std over seeds),
``toy.json``, ``toy_curves.png`` (held-out accuracy and reward against student updates) and
``toy_samples.png`` (every model on the same prompts and seeds), and puts the table in
``docs/benchmarks.md`` between the ``toy-benchmark`` markers and the paired differences
(each recipe - ``dmd`` and - teacher, seed by seed, with 95 % t-intervals; FD ratio to
``dmd``) between the ``toy-paired`` markers. ``--tag NAME`` names the outputs and markers
instead (``docs/benchmarks/NAME.md``, ``NAME-benchmark``, ``NAME-paired``), so a study on
other recipes leaves the main table alone. ``--from-json`` redoes the
table and the curves from a ``toy.json`` without running anything; ``--grid-only`` redoes
the sample grid from finished runs; ``--eval-only`` trains nothing and evaluates the runs of
``--out`` that finished (the paired table pairs them by training seed); ``--train-only``
trains and stops.

Training runs ``--jobs`` at a time (default: one per CPU core), each with an equal share of
the cores as torch threads (small models run best on one thread each) and its output
appended to ``OUT/<run>.log``; the teacher and reward are built (trained and cached on first
use) once before they start. A finished run is reused (``--resume auto``), so an interrupted
benchmark picks up where it stopped. Evaluation runs afterwards, one model at a time. About
an hour on a 2-core CPU with the default settings (40 minutes training, 15 evaluating).
Checked end to end with ``--seeds 0 --steps 2 --recipes dmd,gdmd --teacher-steps 5``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gdmd.eval.harness import evaluate, evaluation_prompts, generate
from gdmd.images import save_grid
from gdmd.manager import build_plugin_manager
from gdmd.run.rundir import RunDir
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
        # Every checkpoint is kept: they are the points of the training curves.
        "--set",
        "train.keep_checkpoints=1000",
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
    runs: list[tuple[str, int]],
    steps: int | None,
    output: Path,
    jobs: int,
    threads: int | None = None,
) -> dict[tuple[str, int], Path]:
    """Train every (recipe, seed), ``jobs`` at a time with ``threads`` torch threads each
    (default: an equal share of the cores); returns their run directories."""
    output.mkdir(parents=True, exist_ok=True)
    # Build (and cache) teacher and reward once, so parallel runs do not all train them.
    first_recipe, first_seed = runs[0]
    subprocess.run([*run_command(first_recipe, first_seed, steps, output), "--dry-run"], check=True)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def one(recipe: str, seed: int) -> Path:
        name = f"{recipe}-s{seed}"
        log = output / f"{name}.log"
        sys.stderr.write(f"training {name} (log: {log})\n")
        with log.open("a") as handle:  # a resumed run keeps its earlier output
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
    if not values:
        return "-"  # a metric these runs do not have
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table_markdown(data: dict) -> str:
    """The comparison table: the teacher, then each recipe's mean ± std over training seeds."""
    teacher_steps = data.get("teacher_steps", 50)
    header = "| model | NFE | " + " | ".join(COLUMNS) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(COLUMNS)]
    teacher = data["teacher"][0]
    lines.append(
        f"| teacher (Euler, CFG) | {2 * teacher_steps} | "
        + " | ".join(f"{teacher.get(c, float('nan')):.3f}" for c in COLUMNS)
        + " |"
    )
    for recipe, rows in data["students"].items():
        cells = [mean_std([r[c] for r in rows if c in r]) for c in COLUMNS]
        lines.append(f"| {recipe.replace('_', '-')} 4-step | 4 | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Two-sided 97.5 % quantiles of Student's t, by degrees of freedom (95 % intervals).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
PAIRED = [("accuracy", 3), ("reward/alignment", 2)]


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over seeds (the interval is the mean alone for one seed)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def _ci_text(values: list[float], digits: int) -> str:
    mean, low, high = mean_ci(values)
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def paired_markdown(data: dict, baseline: str = "dmd") -> str:
    """Paired differences over training seeds, with 95 % t-intervals.

    Run ``i`` of every recipe has the same training seed, and every model is evaluated on the
    same prompts and noise, so each difference is taken seed by seed: recipe - ``baseline``
    and recipe - teacher (one teacher, so that interval holds training-seed noise only). The
    FD ratio is the geometric mean over seeds of FD(recipe) / FD(baseline), its interval taken
    on the log ratios.
    """
    students = data["students"]
    if baseline not in students:
        return ""
    teacher = data["teacher"][0]
    # Pair by training seed when the seeds are recorded (runs may be missing), else by order.
    seeds = data.get("student_seeds", {})

    def by_seed(recipe: str) -> dict[int, dict]:
        rows = students[recipe]
        return dict(zip(seeds.get(recipe, range(len(rows))), rows, strict=True))

    base_by_seed = by_seed(baseline)
    base = list(base_by_seed.values())
    header = (
        "| model | seeds | "
        + " | ".join(f"{c} - {baseline}" for c, _ in PAIRED)
        + " | "
        + " | ".join(f"{c} - teacher" for c, _ in PAIRED)
        + f" | FD / {baseline} |"
    )
    lines = [header, "|---|---:|" + "---:|" * (2 * len(PAIRED) + 1)]
    for recipe in students:
        if recipe == baseline:
            continue
        mine = by_seed(recipe)
        common = [seed for seed in mine if seed in base_by_seed]
        if not common:
            continue
        pairs = [(mine[seed], base_by_seed[seed]) for seed in common]
        n = len(pairs)
        cells = [_ci_text([a[c] - b[c] for a, b in pairs], d) for c, d in PAIRED]
        cells += [_ci_text([a[c] - teacher[c] for a, _ in pairs], d) for c, d in PAIRED]
        logs = [math.log(a["fd"] / b["fd"]) for a, b in pairs]
        mean, low, high = mean_ci(logs)
        cells.append(f"{math.exp(mean):.2f} [{math.exp(low):.2f}, {math.exp(high):.2f}]")
        lines.append(f"| {recipe.replace('_', '-')} | {n} | " + " | ".join(cells) + " |")
    teacher_cells = [_ci_text([r[c] - teacher[c] for r in base], d) for c, d in PAIRED]
    lines.append(
        f"| {baseline} | {len(base)} | "
        + " | ".join("0" for _ in PAIRED)
        + " | "
        + " | ".join(teacher_cells)
        + " | 1 |"
    )
    return "\n".join(lines) + "\n"


def update_benchmarks_md(
    table: str, path: Path = ROOT / "docs" / "benchmarks.md", marker: str = "toy-benchmark"
) -> bool:
    """Replace the table between the ``marker`` markers; False if there are none."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        return False
    before, rest = text.split(begin, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{begin}\n{table}{end}{after}")
    return True


def plot_curves(data: dict, path: Path) -> bool:
    """Held-out accuracy and reward against student updates: every run as a thin line, and
    each recipe's mean over its runs as a thick one where the runs share checkpoint steps."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    teacher = data["teacher"][0]
    for index, (recipe, runs) in enumerate(data["curves"].items()):
        curves = [curve for curve in runs if curve]
        label = recipe.replace("_", "-")
        for curve in curves:
            steps_, acc, rew = zip(*curve, strict=True)
            thin = {"color": f"C{index}", "lw": 0.7, "alpha": 0.35}
            axes[0].plot(steps_, acc, **thin)
            axes[1].plot(steps_, rew, **thin)
        if curves and all([p[0] for p in c] == [p[0] for p in curves[0]] for c in curves):
            steps_ = [p[0] for p in curves[0]]
            for axis, column in ((axes[0], 1), (axes[1], 2)):
                mean = [statistics.mean(c[j][column] for c in curves) for j in range(len(steps_))]
                axis.plot(steps_, mean, color=f"C{index}", marker="o", ms=3, lw=2, label=label)
    for axis, key in zip(axes, ("accuracy", "reward/alignment"), strict=True):
        axis.axhline(teacher[key], color="k", ls="--", label="teacher (50 steps, CFG)")
        axis.set_xlabel("student updates")
    axes[0].set_ylabel("checker accuracy (held-out, 120 images)")
    axes[1].set_ylabel("alignment reward (held-out, 120 images)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_docs(
    data: dict, docs: Path, tag: str = "toy", baselines: tuple[str, ...] = ("dmd",)
) -> str:
    """``docs/benchmarks/<tag>.md``, ``.json`` and ``_curves.png``; the tables between the
    ``<tag>-benchmark`` and ``<tag>-paired`` markers of ``docs/benchmarks.md`` (the first
    baseline's paired table; each further baseline's between ``<tag>-paired-<baseline>``)."""
    table = table_markdown(data)
    text = table
    (docs / f"{tag}.json").write_text(json.dumps(data, indent=1) + "\n")
    plot_curves(data, docs / f"{tag}_curves.png")
    if not update_benchmarks_md(table, marker=f"{tag}-benchmark"):
        sys.stderr.write(f"docs/benchmarks.md has no {tag}-benchmark markers; table not copied\n")
    for i, baseline in enumerate(baselines):
        paired = paired_markdown(data, baseline)
        if not paired:
            sys.stderr.write(f"no {baseline} runs: no paired table against {baseline}\n")
            continue
        text += "\n" + paired
        marker = f"{tag}-paired" if i == 0 else f"{tag}-paired-{baseline}"
        if not update_benchmarks_md(paired, marker=marker):
            sys.stderr.write(f"docs/benchmarks.md has no {marker} markers; table not copied\n")
    (docs / f"{tag}.md").write_text(text)
    return text


def merge_results(parts: list[dict]) -> dict:
    """One result from several ``toy.json`` files of the same teacher and evaluation noise
    (runs evaluated in separate invocations); a recipe in two parts is an error."""
    first = parts[0]
    for part in parts[1:]:
        for key in ("teacher_steps", "eval_seeds"):
            if part.get(key) != first.get(key):
                raise SystemExit(
                    f"cannot merge: {key} differs ({first.get(key)} vs {part.get(key)})"
                )
        teacher, other = first["teacher"][0]["accuracy"], part["teacher"][0]["accuracy"]
        if abs(teacher - other) > 1e-3:
            raise SystemExit(f"cannot merge: another teacher ({teacher:.3f} vs {other:.3f})")
    merged = {**first, "students": {}, "curves": {}, "student_seeds": {}}
    for part in parts:
        for recipe, rows in part["students"].items():
            if recipe in merged["students"]:
                raise SystemExit(f"cannot merge: recipe {recipe!r} is in more than one file")
            merged["students"][recipe] = rows
            merged["curves"][recipe] = part.get("curves", {}).get(recipe, [])
            seeds = part.get("student_seeds", {}).get(recipe, list(range(len(rows))))
            merged["student_seeds"][recipe] = seeds
    return merged


def grid_picks(count: int, columns: int = 8) -> list[int]:
    """Evenly spaced image indices: the category-balanced prompt list gives every category."""
    return [i * count // columns for i in range(columns)]


def evaluate_all(
    run_dirs: dict[tuple[str, int], Path],
    recipes: list[str],
    seeds: list[int],
    eval_seeds: list[int],
    teacher_steps: int,
    docs: Path,
    tag: str = "toy",
    curves: bool = True,
) -> dict:
    """Every checkpoint (curves, 120 images; unless ``curves`` is false) and every final
    student (``eval_seeds``)."""
    pm = build_plugin_manager()
    data: dict = {
        "teacher_steps": teacher_steps,
        "training_seeds": seeds,
        "eval_seeds": eval_seeds,
        "teacher": [],
        "students": {},
        "curves": {},
    }
    start_points: dict[int, tuple[int, float, float]] = {}
    for recipe in recipes:
        for seed in seeds:
            if (recipe, seed) not in run_dirs:
                continue
            run_dir = run_dirs[(recipe, seed)]
            sys.stderr.write(f"evaluating {run_dir.name}\n")
            loaded = RunDir.existing(run_dir).open(pm)
            if seed not in start_points:
                # Step 0: the student is the teacher's copy, sampled as the student.
                at_start = dataclasses.replace(loaded, student=loaded.teacher)
                result, _, _ = evaluate(at_start, seeds=[0], num_images=120)
                m = result.metrics
                start_points[seed] = (0, m["accuracy"], m["reward/alignment"])
            curve = [start_points[seed]]
            for step, path in complete_checkpoints(run_dir / "checkpoints") if curves else []:
                at_step = RunDir.existing(run_dir).open(pm, checkpoint=path)
                result, _, _ = evaluate(at_step, seeds=[0], num_images=120)
                m = result.metrics
                curve.append((step, m["accuracy"], m["reward/alignment"]))
            data["curves"].setdefault(recipe, []).append(curve)
            result, _, _ = evaluate(loaded, seeds=eval_seeds)
            data["students"].setdefault(recipe, []).append(result.metrics)
            data.setdefault("student_seeds", {}).setdefault(recipe, []).append(seed)
            if not data["teacher"]:
                teacher, _, _ = evaluate(
                    loaded, model="teacher", steps=teacher_steps, seeds=eval_seeds
                )
                data["teacher"].append(teacher.metrics)
    sample_grid({r: run_dirs[(r, seeds[0])] for r in recipes}, teacher_steps, docs, tag)
    return data


def sample_grid(
    run_dirs: dict[str, Path], teacher_steps: int, docs: Path, tag: str = "toy"
) -> Path:
    """``<tag>_samples.png``: the teacher, then each run, on eight held-out prompts spread over
    the categories, with the same seeds in every row."""
    pm = build_plugin_manager()
    rows: dict[str, torch.Tensor] = {}
    shown: list[str] = []
    for recipe, run_dir in run_dirs.items():
        loaded = RunDir.existing(run_dir).open(pm)
        base = evaluation_prompts(loaded)
        picks = grid_picks(len(base))
        shown = [base[i] for i in picks]
        if not rows:
            rows["teacher"] = generate(loaded, shown, picks, model="teacher", steps=teacher_steps)
        rows[recipe.replace("_", "-")] = generate(loaded, shown, picks)
    return save_grid(
        torch.cat(list(rows.values())),
        docs / f"{tag}_samples.png",
        shown * len(rows),
        ncol=len(shown),
        upscale=4,
        row_labels=list(rows),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="override [train] steps")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--out", default=str(ROOT / "runs" / "toy-benchmark"))
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument(
        "--tag",
        default="toy",
        help="name of the outputs (docs/benchmarks/TAG.md, .json, _curves.png, _samples.png) "
        "and of the TAG-benchmark / TAG-paired markers in docs/benchmarks.md",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel runs (default: one per core)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per training run (default: the cores divided by --jobs)",
    )
    parser.add_argument(
        "--eval-seeds", default="0,1,2", help="image seeds per evaluated model (held-out prompts)"
    )
    parser.add_argument(
        "--train-only", action="store_true", help="train the runs, evaluate nothing"
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="train nothing: evaluate the runs in --out that finished (an exported student)",
    )
    parser.add_argument(
        "--no-curves",
        dest="curves",
        action="store_false",
        help="evaluate only the final students, not every checkpoint (no training curves)",
    )
    parser.add_argument(
        "--from-json",
        default=None,
        help="only redo tables and curves from this toy.json (a comma list: merged, each "
        "recipe from one file; same teacher and evaluation seeds)",
    )
    parser.add_argument(
        "--baselines",
        default="dmd",
        help="paired tables against each of these recipes (comma list; default dmd)",
    )
    parser.add_argument(
        "--grid-only",
        action="store_true",
        help="only redo toy_samples.png from the first seed's finished runs in --out",
    )
    args = parser.parse_args()
    docs = ROOT / "docs" / "benchmarks"
    docs.mkdir(parents=True, exist_ok=True)
    if args.grid_only:
        first = int(args.seeds.split(",")[0])
        runs = {r: Path(args.out) / f"{r}-s{first}" for r in args.recipes.split(",")}
        sys.stdout.write(f"{sample_grid(runs, args.teacher_steps, docs, args.tag)}\n")
        return
    if args.from_json:
        data = merge_results([json.loads(Path(f).read_text()) for f in args.from_json.split(",")])
    else:
        if args.jobs < 1:
            parser.error(f"--jobs must be at least 1, got {args.jobs}")
        if args.threads is not None and args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        seeds = [int(s) for s in args.seeds.split(",")]
        eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
        recipes = args.recipes.split(",")
        # Seed by seed, so an interrupted benchmark has every recipe at its first seeds.
        runs = [(r, s) for s in seeds for r in recipes]
        if args.eval_only:
            out = Path(args.out)
            finished = [(r, s) for r, s in runs if (out / f"{r}-s{s}" / "student").is_dir()]
            for r, s in sorted(set(runs) - set(finished)):
                sys.stderr.write(f"not evaluated (unfinished): {r}-s{s}\n")
            run_dirs = {key: out / f"{key[0]}-s{key[1]}" for key in finished}
        else:
            run_dirs = train_all(runs, args.steps, Path(args.out), args.jobs, args.threads)
            if args.train_only:
                return
        data = evaluate_all(
            run_dirs, recipes, seeds, eval_seeds, args.teacher_steps, docs, args.tag, args.curves
        )
    sys.stdout.write(write_docs(data, docs, args.tag, tuple(args.baselines.split(","))))


if __name__ == "__main__":
    main()
