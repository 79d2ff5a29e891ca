"""FSDP2 check on a GPU machine: wrapping, checkpoint and exact resume (world size 1 or more).

    python benchmarks/gpu_fsdp2.py [--processes 1] [--out /tmp/gdmd-fsdp2]

Runs the tiny CPU recipe (its teacher is built in code, nothing is downloaded) on CUDA under
``accelerate launch`` with recipes/accelerate/fsdp2.yaml (wrapping threshold lowered so the
tiny networks are split into several FSDP units), then checks:

1. the run really used FSDP2 with the requested number of processes (run.json);
2. 4 steps straight vs 2 steps, stop, ``--resume auto``, 2 more steps: the step-4
   checkpoints (student, critic, both optimizers, schedules, counters) are bitwise equal;
3. FSDP2 vs a plain single-process GPU run of the same recipe: trained tensors close (FSDP2
   reduces gradients in another order, so not bitwise).

Prints one line per check and exits 1 if any fails. Needs CUDA; FSDP2 cannot run on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny_cpu.toml"
PRESET = ROOT / "recipes" / "accelerate" / "fsdp2.yaml"


def _config(out: Path, processes: int) -> Path:
    text = PRESET.read_text()
    text = text.replace("num_processes: 8", f"num_processes: {processes}")
    text = text.replace("fsdp_min_num_params: 1000000", "fsdp_min_num_params: 2000")
    path = out / "fsdp2.yaml"
    path.write_text(text)
    return path


def _gdmd(out: Path, name: str, config: Path | None, *args: str) -> None:
    sets = [
        f"run.output_dir={out / 'runs'}",
        f"run.name={name}",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=10",
        'log.trackers=["jsonl"]',
    ]
    run = ["-m", "gdmd", "run", str(RECIPE), *(f"--set={s}" for s in sets), *args]
    if config is None:
        cmd = [sys.executable, *run]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, timeout=1800)


def _load(run: Path, step: int):  # type: ignore[no-untyped-def]
    from gdmd.train.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoints" / f"step-{step:07d}")


def _flat(tree, prefix=""):  # type: ignore[no-untyped-def]
    if isinstance(tree, dict):
        return {k: v for key, val in tree.items() for k, v in _flat(val, f"{prefix}.{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, val in enumerate(tree) for k, v in _flat(val, f"{prefix}[{i}]").items()}
    return {prefix: tree}


def _bitwise(a, b) -> list[str]:  # type: ignore[no-untyped-def]
    import torch

    left, right = _flat(a), _flat(b)
    if left.keys() != right.keys():
        return sorted(left.keys() ^ right.keys())
    bad = []
    for key, value in left.items():
        other = right[key]
        same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
        if not same:
            bad.append(key)
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gdmd-fsdp2"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: FSDP2 needs GPUs", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    config = _config(args.out, args.processes)
    runs = args.out / "runs"
    failures = 0

    def report(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)

    _gdmd(args.out, "straight", config, "--set=train.steps=4")
    info = json.loads((runs / "straight" / "run.json").read_text())
    report(
        info["distributed_type"].endswith("FSDP") and info["num_processes"] == args.processes,
        f"FSDP2 with {args.processes} process(es): {info['distributed_type']}, "
        f"{info['num_processes']}",
    )
    _gdmd(args.out, "split", config, "--set=train.steps=2")
    _gdmd(args.out, "split", config, "--set=train.steps=4", "--resume=auto")
    bad = _bitwise(_load(runs / "straight", 4), _load(runs / "split", 4))
    report(not bad, f"exact resume at step 2 of 4 (differing: {bad[:5]})")

    _gdmd(args.out, "plain", None, "--set=train.steps=4")
    plain, _ = _load(runs / "plain", 4)
    sharded, _ = _load(runs / "straight", 4)
    worst = 0.0
    for role in ("student", "critic"):
        for name, value in plain[role].items():
            worst = max(worst, float((value - sharded[role][name]).abs().max()))
    report(worst < 1e-3, f"FSDP2 vs one plain process: largest difference {worst:.3g}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
