"""A disk that fills up while a checkpoint is written, and the check that the run stops
cleanly and resumes exactly once space is back.

Shared by ``tests/reliability/test_full_disk.py`` and ``benchmarks/reliability.py
full-disk`` (the counted figure in ``docs/reliability.md``). The run is
``recipes/tiny_cpu.toml`` made smaller, a checkpoint after every step, run in this process
through the real command line; the checkpoint writer's safetensors calls fail from the
``fail_at``-th on, the way a full disk fails them (``OSError`` ENOSPC, or safetensors'
own error wrapping it). A trial holds when:

1. the run exits 1 with ``error:`` naming the checkpoint it could not write, no traceback;
2. no half-written folder is left, and every complete checkpoint left loads;
3. ``--resume auto`` (the disk has space again) continues from the newest of them, and the
   final state and ``metrics.jsonl`` equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny_cpu.toml"
STEPS = 3
SETS = [
    "train.batch_size=2",
    "target.k=2",
    "train.critic_steps=1",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=2",
    'log.trackers=["jsonl"]',
    f"train.steps={STEPS}",
]


def gdmd(pm: Any, out: Path, name: str, *args: str) -> tuple[int, str, BaseException | None]:
    """``gdmd run`` on the small recipe in this process: exit code, output, traceback."""
    from typer.testing import CliRunner

    from gdmd.cli import make_app

    sets = [*SETS, f"run.output_dir={out}", f"run.name={name}"]
    argv = ["run", str(RECIPE), *(f"--set={s}" for s in sets), *args]
    result = CliRunner().invoke(make_app(pm), argv, env={"COLUMNS": "10000"})
    exc = result.exception
    traceback = exc if exc is not None and not isinstance(exc, SystemExit) else None
    return result.exit_code, " ".join(result.output.split()), traceback


@contextmanager
def disk_full_from(fail_at: int, error: str) -> Iterator[list[str]]:
    """Make the checkpoint writer's ``fail_at``-th safetensors write (counting from 1) and
    every later one fail as on a full disk; yields the files it refused."""
    import gdmd.train.checkpoint as checkpoint

    real = checkpoint.save_file
    calls = [0]
    refused: list[str] = []

    def save_file(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] < fail_at:
            real(tensors, filename, *args, **kwargs)
            return
        # Half a file reaches the disk before the space runs out.
        Path(filename).write_bytes(b"\0" * 64)
        refused.append(filename)
        if error == "safetensors":
            raise checkpoint.SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    with mock.patch.object(checkpoint, "save_file", save_file):
        yield refused


def writes_per_checkpoint(run_dir: Path) -> int:
    """How many safetensors files one checkpoint of the run holds."""
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return len(list(newest.glob("*.safetensors")))


def flat_state(path: Path) -> dict[str, Any]:
    from gdmd.train.checkpoint import load_checkpoint

    tensors, states = load_checkpoint(path)
    found: dict[str, Any] = {}

    def walk(tree: Any, prefix: str) -> None:
        if isinstance(tree, dict):
            for key, value in tree.items():
                walk(value, f"{prefix}.{key}")
        elif isinstance(tree, (list, tuple)):
            for i, value in enumerate(tree):
                walk(value, f"{prefix}[{i}]")
        else:
            found[prefix] = tree

    walk({"tensors": tensors, "states": states}, "")
    return found


def bitwise_equal(a: Path, b: Path) -> bool:
    import torch

    left, right = flat_state(a), flat_state(b)
    if left.keys() != right.keys():
        return False
    for key, value in left.items():
        other = right[key]
        if isinstance(value, torch.Tensor):
            if not (isinstance(other, torch.Tensor) and torch.equal(value, other)):
                return False
        elif value != other:
            return False
    return True


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "step_time"} for x in lines]


def final(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / f"step-{STEPS:07d}"


def full_disk_trial(
    pm: Any, out: Path, reference: Path, name: str, fail_at: int, error: str
) -> tuple[list[str], int]:
    """One trial; returns what did not hold (empty: all held) and the step that failed."""
    from gdmd.errors import CheckpointError
    from gdmd.train.checkpoint import complete_checkpoints, load_checkpoint

    problems: list[str] = []
    run_dir = out / name
    per_save = writes_per_checkpoint(reference)
    failed_step = (fail_at - 1) // per_save + 1
    with disk_full_from(fail_at, error):
        code, text, traceback = gdmd(pm, out, name)
    where = run_dir / "checkpoints" / f"step-{failed_step:07d}"
    if traceback is not None:
        problems.append(f"the full disk gave a traceback: {traceback!r}")
    elif code != 1 or "error:" not in text or f"cannot write checkpoint {where}" not in text:
        problems.append(f"exit {code}, the checkpoint is not named: {text[-400:]}")
    if any((run_dir / "checkpoints").glob(".tmp-*")):
        problems.append("a half-written checkpoint folder was left behind")
    found = complete_checkpoints(run_dir / "checkpoints")
    if [step for step, _ in found] != list(range(max(1, failed_step - 2), failed_step)):
        problems.append(f"checkpoints left: {[step for step, _ in found]}")
    for _, path in found:
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            problems.append(f"a complete checkpoint does not load: {exc}")
    code, text, traceback = gdmd(pm, out, name, "--resume", "auto")
    if code != 0 or traceback is not None:
        problems.append(f"the resume exited {code} ({traceback!r}): {text[-400:]}")
    elif found and f"resuming from {found[-1][1]}" not in text:
        problems.append(f"the resume did not start from {found[-1][1]}: {text[-300:]}")
    elif not bitwise_equal(final(reference), final(run_dir)):
        problems.append("the resumed run's final state differs from the uninterrupted run's")
    elif metrics(reference) != metrics(run_dir):
        problems.append("metrics.jsonl differs from the uninterrupted run's")
    return problems, failed_step
