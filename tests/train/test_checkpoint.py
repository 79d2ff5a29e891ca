"""Atomic checkpoints, pickle-free state, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gdmd.train.checkpoint as ckpt
from gdmd.errors import CheckpointError
from gdmd.train.checkpoint import (
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _save(root: Path, step: int, keep: int = 2) -> Path:
    return save_checkpoint(
        root,
        step,
        {"student": {"w": torch.full((2,), float(step))}},
        {
            "optim": {"state": {0: {"exp_avg": torch.ones(2) * step, "step": step}}, "lr": 0.1},
            "counters": {"step": step},
        },
        keep=keep,
    )


def test_round_trip_restores_nested_state_with_int_keys_and_tuples(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path,
        5,
        {"student": {"a.weight": torch.arange(4.0)}},
        {"optim": {"state": {3: {"exp_avg": torch.ones(2)}}, "betas": (0.9, 0.99)}},
        keep=1,
    )
    tensors, states = load_checkpoint(path)
    assert torch.equal(tensors["student"]["a.weight"], torch.arange(4.0))
    assert torch.equal(states["optim"]["state"][3]["exp_avg"], torch.ones(2))
    assert states["optim"]["betas"] == (0.9, 0.99)
    # Only safetensors and JSON: nothing in a checkpoint is ever unpickled.
    assert {p.suffix for p in path.iterdir()} <= {".safetensors", ".json", ""}


def test_keeps_the_newest_whole_checkpoints(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=2)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [2, 3]


def test_an_interrupted_save_leaves_the_previous_checkpoint_and_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(tmp_path, 1)
    calls = {"n": 0}
    real_save_file = ckpt.save_file

    def dies_midway(tensors, filename):  # the process "dies" while writing the second file
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_save_file(tensors, filename)

    monkeypatch.setattr(ckpt, "save_file", dies_midway)
    with pytest.raises(ckpt.CheckpointWriteError, match="disk full"):
        _save(tmp_path, 2, keep=1)
    # The half-written folder is removed; the previous checkpoint is neither loaded nor deleted.
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000001"
    _, states = load_checkpoint(tmp_path / "step-0000001")
    assert states["counters"] == {"step": 1}

    monkeypatch.setattr(ckpt, "save_file", real_save_file)
    _save(tmp_path, 2, keep=1)  # the next whole save replaces the previous one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000002"]


def test_a_folder_without_marker_is_refused(tmp_path: Path) -> None:
    (tmp_path / "step-0000009").mkdir()
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "step-0000009")


def test_sigterm_saves_at_the_step_boundary_and_exits_143(write_recipe, tmp_path: Path) -> None:
    recipe_path = write_recipe()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "gdmd",
        "run",
        str(recipe_path),
        "--set",
        "train.steps=100000",
        "--set",
        "train.checkpoint_every=1000",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the run never logged two steps"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out.decode()
    assert "received SIGTERM" in out.decode()
    found = complete_checkpoints(tmp_path / "runs" / "tiny" / "checkpoints")
    assert len(found) == 1
    step, path = found[0]
    assert step >= 2
    assert json.loads((path / "counters.json").read_text()) == {"step": step}
