"""Rebuild the toy models gdmd ships (``gdmd/toy/shipped/``) from the project's own code.

    python benchmarks/build_toy_models.py                 # the shipped defaults
    python benchmarks/build_toy_models.py --out DIR --teacher-steps 2 --alignment-steps 2 \\
        --evaluator-steps 2                               # the same path at test size

Trains the default ``toy-teacher``, the ``toy-alignment`` reward and the evaluator through the
same code and the same cache entries as a first run on a user's machine, with the shipped
entries switched off (``GDMD_SHIPPED_MODELS=0``) and a fresh cache (or ``--cache DIR``, which
reuses entries already trained there), then copies each entry into ``--out``, replacing what
was there for that model. Float order depends on the CPU and the thread count (``--threads``,
default 1, which is what the shipped entries were built with): a rebuild on another machine
gives models of the same quality, not the same bits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "gdmd" / "toy" / "shipped"


def build(
    out: Path,
    cache: Path,
    *,
    teacher_steps: int | None = None,
    alignment_steps: int | None = None,
    evaluator_steps: int | None = None,
) -> list[Path]:
    """Train (or reuse from ``cache``) the three models and copy their entries into ``out``.

    A step count left ``None`` is the model's default, so the entries are the ones a default
    recipe asks for. Returns the entries written, teacher first.
    """
    os.environ["GDMD_SHIPPED_MODELS"] = "0"
    from gdmd.toy import alignment, evaluator
    from gdmd.toy.cache import cache_key, cached
    from gdmd.toy.teacher import ToyTeacherConfig, teacher_cache_settings, train_toy_teacher

    teacher = ToyTeacherConfig() if teacher_steps is None else ToyTeacherConfig(
        train_steps=teacher_steps
    )
    teacher_settings = teacher_cache_settings(teacher)
    cached(
        "toy-teacher",
        teacher_settings,
        lambda d: train_toy_teacher(teacher, d),
        root=cache,
    )
    align_steps = alignment_steps or alignment.DEFAULT_STEPS
    alignment.load_or_train_alignment_model(align_steps, cache_root=cache)
    eval_steps = evaluator_steps or evaluator.DEFAULT_STEPS
    evaluator.load_or_train_evaluator(eval_steps, cache_root=cache)

    written = []
    for kind, settings in (
        ("toy-teacher", teacher_settings),
        ("toy-alignment", alignment.alignment_cache_settings(align_steps)),
        ("toy-evaluator", evaluator.evaluator_cache_settings(eval_steps)),
    ):
        key = cache_key(kind, settings)
        target = out / kind
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copytree(cache / kind / key, target / key)
        written.append(target / key)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where entries go.")
    parser.add_argument("--cache", type=Path, help="Cache to train into (default: a new one).")
    parser.add_argument("--teacher-steps", type=int, help="Teacher steps (default: its default).")
    parser.add_argument("--alignment-steps", type=int, help="Alignment reward steps.")
    parser.add_argument("--evaluator-steps", type=int, help="Evaluator steps.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1).")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="gdmd-toy-build-"))
    entries = build(
        args.out,
        cache,
        teacher_steps=args.teacher_steps,
        alignment_steps=args.alignment_steps,
        evaluator_steps=args.evaluator_steps,
    )
    for entry in entries:
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        reports = {
            name: json.loads((entry / name).read_text())
            for name in ("ranking.json", "accuracy.json")
            if (entry / name).is_file()
        }
        print(f"{entry.relative_to(args.out)}  {size / 1e6:.2f} MB  {json.dumps(reports)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
