"""Several processes (DDP over gloo on the CPU): the same run as one process, exactly resumed,
stopped together on a NaN, written by the main process only; and launches that would race
are refused before they touch the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.train.checkpoint import complete_checkpoints, load_checkpoint

from .conftest import tiny_recipe

APP = Path(__file__).with_name("launched_app.py")
TIMEOUT = 600  # seconds; a hang fails the test instead of the whole CI run


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, start_new_session=True
    )


def torchrun(record: Path, runs: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 launched_app.py run ...`` (PyTorch's own launcher)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", "2", str(APP), "run", *args]
    return _run(cmd, _env(GDMD_TEST_RECORD=str(record), GDMD_TEST_RUNS=str(runs), **env))


def gdmd_run(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "gdmd", "run", *args], _env())


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}"))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, value in enumerate(tree):
            out.update(_flat(value, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def _state(path: Path) -> dict[str, object]:
    tensors, states = load_checkpoint(path)
    return _flat({"tensors": tensors, "states": states})


def assert_equal_states(a: Path, b: Path) -> None:
    left, right = _state(a), _state(b)
    assert left.keys() == right.keys()
    for key, value in left.items():
        other = right[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key  # type: ignore[arg-type]
        else:
            assert value == other, key


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path):
    """One 3-step run on 2 processes with batch 2 each, reused by the tests below."""
    root = tmp_path_factory.mktemp("ddp")
    runs = root / "runs"
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(runs, teacher_dir, name="two"))
    done = torchrun(root / "record", runs, str(recipe))
    assert done.returncode == 0, done.stdout + done.stderr
    return root, recipe, runs / "two"


def test_two_processes_train_as_one_run(two_process_run) -> None:
    root, _, run_dir = two_process_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["num_processes"] == 2 and info["distributed_type"].endswith("MULTI_CPU")
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3]  # one line per step, not two
    # After every step both processes hold the same student, critic and optimizer states.
    assert_equal_states(
        root / "record" / "rank0" / "step-0000003", root / "record" / "rank1" / "step-0000003"
    )
    assert_equal_states(
        root / "record" / "rank0" / "step-0000003", run_dir / "checkpoints" / "step-0000003"
    )
    # Only the main process wrote into the run directory.
    assert json.loads((root / "record" / "writes-rank1.json").read_text()) == []
    assert json.loads((root / "record" / "writes-rank0.json").read_text())


def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(
    two_process_run, gdmd_pm, tmp_path: Path, teacher_dir: Path
) -> None:
    _, _, run_dir = two_process_run
    recipe = tmp_path / "one.toml"
    recipe.write_text(tiny_recipe(tmp_path / "runs", teacher_dir, name="two"))
    result = CliRunner().invoke(
        make_app(gdmd_pm), ["run", str(recipe), "--set", "train.batch_size=4"]
    )
    assert result.exit_code == 0, result.output
    one_tensors, one_states = load_checkpoint(
        tmp_path / "runs" / "two" / "checkpoints" / "step-0000003"
    )
    two_tensors, two_states = load_checkpoint(run_dir / "checkpoints" / "step-0000003")
    teacher = load_file(str(teacher_dir / "model.safetensors"))
    for role in ("student", "critic"):
        # How far each run moved the network from the teacher, and how far apart the two
        # moves are. Sums in another order (per-process means, then gloo's all-reduce) differ
        # in the last bits, and Adam turns the float noise of gradients that are zero in exact
        # arithmetic (a bias before a normalisation) into whole lr-sized steps, so the runs
        # are close, not bitwise equal; another random stream moves them ~100% apart.
        names = sorted(one_tensors[role])
        assert names == sorted(two_tensors[role])
        move_one = torch.cat([(one_tensors[role][n] - teacher[n]).flatten() for n in names])
        move_two = torch.cat([(two_tensors[role][n] - teacher[n]).flatten() for n in names])
        assert float(move_one.norm()) > 0.1
        assert float((move_one - move_two).norm() / move_one.norm()) < 0.02, role
    skeleton = {k: v for k, v in _flat(one_states).items() if not isinstance(v, torch.Tensor)}
    assert skeleton == {
        k: v for k, v in _flat(two_states).items() if not isinstance(v, torch.Tensor)
    }
    for a, b in zip(_metrics(tmp_path / "runs" / "two"), _metrics(run_dir), strict=True):
        for key in ("critic/loss", "student/loss", "reward/red", "dmd/t_mean", "student/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-9), key


def test_two_processes_resume_exactly_between_critic_cycles(two_process_run) -> None:
    root, recipe, straight = two_process_run
    # The same recipe under another name, stopped after step 1 (critic_steps = 2), resumed.
    split_recipe = root / "split.toml"
    split_recipe.write_text(recipe.read_text().replace('name = "two"', 'name = "split"'))
    first = gdmd_run(str(split_recipe), "--num-processes", "2", "--set", "train.steps=1")
    assert first.returncode == 0, first.stdout + first.stderr
    second = gdmd_run(str(split_recipe), "--num-processes", "2", "--resume", "auto")
    assert second.returncode == 0, second.stdout + second.stderr
    split = straight.parent / "split"
    assert json.loads((split / "run.json").read_text())["num_processes"] == 2
    assert_equal_states(
        straight / "checkpoints" / "step-0000003", split / "checkpoints" / "step-0000003"
    )
    drop = {"step_time"}
    assert [{k: v for k, v in m.items() if k not in drop} for m in _metrics(split)] == [
        {k: v for k, v in m.items() if k not in drop} for m in _metrics(straight)
    ]


def test_a_nan_on_one_process_stops_both_before_the_optimizer_step(
    tmp_path: Path, teacher_dir: Path
) -> None:
    runs = tmp_path / "runs"
    recipe = tmp_path / "nan.toml"
    recipe.write_text(
        tiny_recipe(runs, teacher_dir, name="nan", rewards='[reward.n]\nkind = "nan-on-process"')
    )
    done = torchrun(tmp_path / "record", runs, str(recipe), "--set", "train.steps=4")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    # Process 1 names the reward; process 0 says who stopped the run; both stop at step 1.
    assert "reward 'n' (plugin 'nan-plugin') returned 4 non-finite score(s)" in out
    assert "process 1 stopped the run at step 1" in out
    assert [s for s, _ in complete_checkpoints(runs / "nan" / "checkpoints")] == [1]
    assert [m["step"] for m in _metrics(runs / "nan")] == [1]
    assert not (runs / "nan" / "run.json").exists()


def test_processes_that_accelerate_sees_as_one_are_refused_before_writing(
    gdmd_pm, write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gdmd.run.build as build

    # What a launcher on a machine without a GPU gave before gdmd chose the CPU back end:
    # WORLD_SIZE=2 in the environment, one process as far as accelerate is concerned.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(build, "wants_cpu", lambda cpu: cpu)
    recipe_path = write_recipe()
    result = CliRunner().invoke(make_app(gdmd_pm), ["run", str(recipe_path)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert (
        "the launcher started 2 processes (WORLD_SIZE=2) but accelerate sees a single one" in text
    )
    assert not (recipe_path.parent / "runs").exists()


def test_num_processes_inside_a_launcher_is_refused(
    gdmd_pm, write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe_path = write_recipe()
    result = CliRunner().invoke(
        make_app(gdmd_pm), ["run", str(recipe_path), "--num-processes", "2"]
    )
    assert result.exit_code == 2, result.output
    assert "already runs under a launcher" in " ".join(result.output.split())
