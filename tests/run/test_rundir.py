"""The run directory: where a run may land, when it may be written, and opening it again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import gdmd
from gdmd.cli import make_app
from gdmd.run.rundir import RunDir, RunDirError
from gdmd.train.checkpoint import load_checkpoint


def run_cli(pm, *args: str):
    return CliRunner().invoke(make_app(pm), list(args), env={"COLUMNS": "200"})


def flat(text: str) -> str:
    return " ".join(text.split())


class CountedReward:
    """A reward whose builds are counted, to see which commands build rewards."""

    builds = 0

    @gdmd.hookimpl
    def gdmd_register_rewards(self, register) -> None:
        def build(config, ctx):
            CountedReward.builds += 1
            return lambda images, prompts: images.mean(dim=(1, 2, 3))

        register("counted", build, summary="Counts its builds.")


# -- where a run may land --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/b", "/tmp/elsewhere", "..", "a\\b"])
def test_validate_refuses_a_run_name_that_is_a_path(gdmd_pm, write_recipe, name: str) -> None:
    recipe_path = write_recipe()
    result = run_cli(gdmd_pm, "validate", str(recipe_path), "--set", f"run.name={name}")
    assert result.exit_code == 2, result.output
    assert f"[run] name: must be a folder name, not a path, got {name!r}" in flat(result.stderr)


def test_a_run_directory_linked_outside_output_dir_is_refused(
    gdmd_pm, write_recipe, tmp_path: Path
) -> None:
    recipe_path = write_recipe()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(elsewhere)
    result = run_cli(gdmd_pm, "run", str(recipe_path), "--set", "train.steps=1")
    assert result.exit_code == 2, result.output
    assert "is a symbolic link to" in flat(result.stderr)
    assert "outside the output_dir" in flat(result.stderr)
    assert list(elsewhere.iterdir()) == []


def test_a_link_that_stays_inside_output_dir_is_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "runs" / "real").mkdir(parents=True)
    (tmp_path / "runs" / "tiny").symlink_to(tmp_path / "runs" / "real")
    recipe = SimpleNamespace(run=SimpleNamespace(name="tiny", output_dir=str(tmp_path / "runs")))
    assert RunDir.for_recipe(recipe).path == tmp_path / "runs" / "tiny"
    bad = SimpleNamespace(run=SimpleNamespace(name="../x", output_dir=str(tmp_path)))
    with pytest.raises(RunDirError, match="must be a folder name"):
        RunDir.for_recipe(bad)


def test_a_run_directory_holding_a_recipe_is_never_written_without_resume(
    gdmd_pm, write_recipe, tmp_path: Path
) -> None:
    recipe_path = write_recipe()
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "resolved.toml").write_text("# an earlier run that stopped before a checkpoint\n")
    result = run_cli(gdmd_pm, "run", str(recipe_path), "--set", "train.steps=1")
    assert result.exit_code == 2, result.output
    assert "already holds a run (resolved.toml); pass --resume auto" in flat(result.stderr)
    assert [p.name for p in run_dir.iterdir()] == ["resolved.toml"]
    assert (run_dir / "resolved.toml").read_text().startswith("# an earlier run")


# -- a finished run, opened again ------------------------------------------------------------


@pytest.fixture
def finished_run(gdmd_pm, write_recipe) -> Path:
    """`gdmd run --resume auto` on a fresh folder: it starts fresh and finishes."""
    gdmd_pm.register(CountedReward(), name="counted-plugin")
    recipe_path = write_recipe(train="ema_decay = 0.5", rewards='[reward.c]\nkind = "counted"')
    result = run_cli(
        gdmd_pm, "run", str(recipe_path), "--resume", "auto", "--set", "train.steps=2"
    )
    assert result.exit_code == 0, result.output
    assert "no checkpoint to resume from: starting a fresh run" in flat(result.output)
    return recipe_path.parent / "runs" / "tiny"


def test_a_run_written_by_gdmd_run_opens_with_its_trained_student(gdmd_pm, finished_run) -> None:
    run = RunDir.existing(finished_run)
    checkpoint = run.latest_checkpoint()
    assert checkpoint is not None and checkpoint.name == "step-0000002"
    assert run.info()["steps"] == 2
    before = CountedReward.builds
    opened = run.open(gdmd_pm, device="cpu", rewards=False)
    assert CountedReward.builds == before  # no rewards built
    assert not hasattr(opened, "critic")
    assert opened.step == 2 and opened.rewards == []
    assert opened.student_timesteps == [1.0, 0.5]
    assert opened.dtype == torch.float32 and opened.device == torch.device("cpu")
    tensors, _ = load_checkpoint(checkpoint)
    state = opened.student.state_dict()
    for key, value in tensors["ema"].items():  # the EMA weights, not the raw student's
        assert torch.equal(state[key], value), key
    assert any(not torch.equal(tensors["student"][k], v) for k, v in tensors["ema"].items())
    with_rewards = run.open(gdmd_pm, device="cpu")
    assert [r.label for r in with_rewards.rewards] == ["c"]


def test_a_run_without_run_json_or_student_folder_opens_the_same(gdmd_pm, finished_run) -> None:
    # What an FSDP2 run, or one stopped before its end, leaves: checkpoints only.
    whole = RunDir.existing(finished_run).open(gdmd_pm, device="cpu", rewards=False)
    (finished_run / "run.json").unlink()
    shutil.rmtree(finished_run / "student")
    bare = RunDir.existing(finished_run).open(gdmd_pm, device="cpu", rewards=False)
    assert bare.info == {} and bare.student_timesteps == whole.student_timesteps
    for key, value in whole.student.state_dict().items():
        assert torch.equal(bare.student.state_dict()[key], value), key


def test_existing_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        RunDir.existing(tmp_path / "nope")
    with pytest.raises(RunDirError, match="it has no resolved.toml"):
        RunDir.existing(tmp_path)


# -- sampling options ------------------------------------------------------------------------


def test_sample_builds_no_rewards_and_takes_device_dtype_and_batch_size(
    gdmd_pm, finished_run, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\ntwo green triangles\n")

    def sample(out: str, *options: str):
        args = ["sample", str(finished_run), "--prompts-file", str(prompts), "--out", out]
        return run_cli(gdmd_pm, *args, "--device", "cpu", *options)

    before = CountedReward.builds
    whole = sample(str(tmp_path / "a"))
    assert whole.exit_code == 0, whole.output
    assert CountedReward.builds == before
    # Batched or not, the same noise per image; the first image of a batch seeds its
    # re-noising, so compare the first image.
    one_by_one = sample(str(tmp_path / "b"), "--batch-size", "1")
    assert one_by_one.exit_code == 0, one_by_one.output
    first = (tmp_path / "a" / "00000.png").read_bytes()
    assert first == (tmp_path / "b" / "00000.png").read_bytes()
    half = sample(str(tmp_path / "c"), "--dtype", "bfloat16")
    assert half.exit_code == 0, half.output
    index = [json.loads(x) for x in (tmp_path / "c" / "index.jsonl").read_text().splitlines()]
    assert [row["file"] for row in index] == ["00000.png", "00001.png", "00002.png"]

    bad = sample(str(tmp_path / "d"), "--dtype", "float8")
    assert bad.exit_code == 2 and "--dtype 'float8': use one of" in flat(bad.stderr)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_sample_on_cuda_without_a_gpu_says_so(gdmd_pm, finished_run, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    args = ["sample", str(finished_run), "--prompts-file", str(prompts), "--out", str(tmp_path)]
    result = run_cli(gdmd_pm, *args, "--device", "cuda")
    assert result.exit_code == 1
    assert "--device cuda: this machine has no CUDA device" in flat(result.stderr)
