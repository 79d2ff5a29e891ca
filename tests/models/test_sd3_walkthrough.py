"""docs/models/sd3.md's "Zero to a 4-step student", run as a user meets it, on the tiny SD3
pipeline: the page's own commands (read from its marked blocks) validate, train 2 updates,
sample, evaluate and export, and the page's diffusers snippet draws ``gdmd sample``'s image.

The only changes made to the page's text: the tiny pipeline's path, dtype, size and T5 length
in place of SD3-Medium's (:data:`FOR_THE_TINY_PIPELINE`), and ``accelerate launch ... -m gdmd``
run as ``gdmd`` in this process (the multi-process launch of ``gdmd sample`` is tested below).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gdmd.cli import make_app

from .conftest import T5_TOKENS

pytest.importorskip("diffusers")
pytest.importorskip("peft")

DOC = Path(__file__).resolve().parents[2] / "docs" / "models" / "sd3.md"
SECTION = "## Zero to a 4-step student"
RUN = "runs/sd3-medium-gdmd-4step"
#: The page's SD3-Medium values -> the tiny pipeline's (each must occur in the page).
FOR_THE_TINY_PIPELINE = {
    "/data/sd3-medium": "{pipeline}",
    "torch.bfloat16": "torch.float32",
    "max_sequence_length=256": f"max_sequence_length={T5_TOKENS}",
    "height=512": "height=16",
    "width=512": "width=16",
}
#: Lines of the section's commands that are not gdmd's, each run or stood in for by the test.
OTHER_COMMANDS = ("hf download", "cp recipes/sd3_4step.toml", "echo ")
CAPTIONS = [f"a {c} {a} in the snow" for c in ("red", "blue", "green", "white") for a in (
    "cat", "dog", "fox", "owl", "car"
)]  # fmt: skip


def _section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def _blocks(mark: str) -> list[str]:
    """The fenced blocks right after ``<!-- walkthrough: MARK -->`` in the section."""
    pattern = rf"<!-- walkthrough: {re.escape(mark)} -->\n```\w+\n(.*?)```"
    return re.findall(pattern, _section(), re.S)


def _commands() -> list[list[str]]:
    lines = [
        line.split("  #")[0].strip()
        for block in _blocks("commands")
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return [shlex.split(line) for line in lines]


def _as_gdmd(argv: list[str]) -> list[str] | None:
    """The gdmd arguments of a command line, or None for another program's line."""
    if argv[0] == "gdmd":
        return argv[1:]
    if argv[:2] == ["accelerate", "launch"] and "-m" in argv:
        at = argv.index("-m")
        assert argv[at + 1] == "gdmd", argv
        return argv[at + 2 :]
    assert any(" ".join(argv).startswith(p) for p in OTHER_COMMANDS), argv
    return None


def _recipe(pipeline: Path, prompts_block: str) -> str:
    """The shipped SD3 recipe's shape at the tiny pipeline's size: 2 updates of gdmd."""
    model = f'kind = "sd3"\nmax_sequence_length = {T5_TOKENS}'
    return f"""
[run]
name = "sd3-medium-gdmd-4step"
seed = 0
output_dir = "runs"

[teacher]
{model}
model = "{pipeline}"
guidance_scale = 2.0

[student]
{model}
init_from = "teacher"
steps = 4
timesteps = [1.0, 0.9, 0.75, 0.5]
lora_rank = 4
lora_alpha = 8.0

[critic]
{model}
init_from = "teacher"
lora_rank = 2

[reward.red]
kind = "channel"
channel = "red"

[target]
kind = "gdmd"
k = 2
vary = "both"

{prompts_block}
[train]
steps = 2
batch_size = 2
critic_steps = 1
student_lr = 1e-2
critic_lr = 1e-2
sample_every = 2
num_sample_prompts = 2

[eval]
num_images = 4
seeds = [0]

[log]
trackers = ["jsonl"]
"""


def _cli(*args: str) -> Any:
    from gdmd.manager import build_plugin_manager

    return CliRunner().invoke(make_app(build_plugin_manager(load_entrypoints=False)), list(args))


def _write_prompts(kind: str) -> None:
    data = Path("data")
    data.mkdir()
    if kind == "table":
        lines = [json.dumps({"caption": c, "id": i}) for i, c in enumerate(CAPTIONS)]
        (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    else:
        from datasets import Dataset

        Dataset.from_dict({"caption": CAPTIONS, "id": list(range(len(CAPTIONS)))}).save_to_disk(
            str(data / "captions")
        )


def test_the_page_lists_what_the_test_runs() -> None:
    section = _section()
    for doc_value in FOR_THE_TINY_PIPELINE:
        assert doc_value in section, doc_value
    assert len(_blocks("prompts table")) == len(_blocks("prompts hf-dataset")) == 1
    assert len(_blocks("python")) == 1
    # Every gdmd command line of the section, in a tested block or not, is one the test runs
    # (the FSDP2 launch is the DDP one's gdmd command under another accelerate config).
    tested = {tuple(a) for a in map(_as_gdmd, _commands()) if a is not None}
    assert {a[0] for a in tested} == {"validate", "run", "sample", "eval", "export"}
    in_blocks = [
        line
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if "gdmd" in line
    ]
    launches = re.findall(r"`(accelerate launch [^`]+)`", section)
    assert launches, "the FSDP2 launch line"
    for line in [*in_blocks, *launches]:
        line = line.split("  #")[0].strip()
        gdmd_args = _as_gdmd(shlex.split(line))
        if gdmd_args and gdmd_args[0] in {"validate", "run", "sample", "eval", "export"}:
            assert tuple(gdmd_args) in tested, line


@pytest.mark.parametrize("prompt_kind", ["table", "hf-dataset"])
def test_zero_to_a_4_step_student(
    prompt_kind: str, sd3_pipeline_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if prompt_kind == "hf-dataset":
        pytest.importorskip("datasets")
    monkeypatch.chdir(tmp_path)
    _write_prompts(prompt_kind)
    (prompts_block,) = _blocks(f"prompts {prompt_kind}")
    Path("sd3.toml").write_text(_recipe(sd3_pipeline_dir, prompts_block))

    # A missing prompt file is reported before any model is touched: the model path is
    # missing too, and only the prompt error shows (gdmd run included).
    missing_model = _recipe(tmp_path / "no-such-model", prompts_block)
    missing = "data/captions.jsonl" if prompt_kind == "table" else "data/captions"
    Path("broken.toml").write_text(missing_model.replace(missing, "data/elsewhere"))
    for command in ("validate", "run"):
        result = _cli(command, "broken.toml")
        assert result.exit_code == 2, result.output
        assert "[prompts] path" in result.output and "data/elsewhere" in result.output
        assert "no-such-model" not in result.output and "Traceback" not in result.output
    assert not Path("runs").exists()

    for argv in _commands():
        gdmd_args = _as_gdmd(argv)
        if gdmd_args is None:
            if argv[0] == "echo":  # the page's `echo "..." > fox.txt`
                Path(argv[-1]).write_text(argv[1] + "\n")
            continue
        result = _cli(*gdmd_args)
        assert result.exit_code == 0, (argv, result.output)
        if gdmd_args[0] == "validate":
            assert "ok" in result.output

    run = Path(RUN)
    assert (run / "checkpoints" / "step-0000002").is_dir()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()][-1] == 2
    assert (run / "samples" / "step-0000002.png").is_file()
    evaluated = json.loads((run / "eval.json").read_text())
    assert "reward/red" in json.dumps(evaluated)
    index = [json.loads(line) for line in Path("samples/fox/index.jsonl").open()]
    assert index == [{"prompt": "a photo of a red fox in the snow", "seed": 0, "file": "00000.png"}]
    assert Path("out/sd3-4step-lora/pytorch_lora_weights.safetensors").is_file()

    # The page's diffusers snippet, diffusers alone, draws gdmd sample's image.
    (code,) = _blocks("python")
    for doc_value, tiny in FOR_THE_TINY_PIPELINE.items():
        code = code.replace(doc_value, tiny.format(pipeline=sd3_pipeline_dir))
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    drawn = np.asarray(Image.open("fox.png"), dtype=np.int16)
    sampled = np.asarray(Image.open("samples/fox/00000.png"), dtype=np.int16)
    assert drawn.shape == sampled.shape == (16, 16, 3)
    assert int(np.abs(drawn - sampled).max()) <= 1
    assert float(sampled.std()) > 0


def test_sample_splits_prompts_across_processes_with_the_same_images(
    sd3_pipeline_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``accelerate launch --num_processes 2 -m gdmd sample``: each process draws its
    share of the batches; the PNGs equal a one-process run's, and index.jsonl is in order."""
    monkeypatch.chdir(tmp_path)  # the run's prompt path is relative, as on the page
    _write_prompts("table")
    (block,) = _blocks("prompts table")
    Path("sd3.toml").write_text(_recipe(sd3_pipeline_dir, block))
    trained = _cli("run", "sd3.toml")
    assert trained.exit_code == 0, trained.output
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(CAPTIONS[:5]) + "\n")
    common = [str(tmp_path / RUN), "--prompts-file", str(prompts), "--seed", "7"]
    common += ["--batch-size", "2"]
    one = _cli("sample", *common, "--out", str(tmp_path / "one"))
    assert one.exit_code == 0, one.output

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # accelerate's --cpu runs a single process (several need mpirun); --multi_gpu starts
    # them with torch's launcher, and on a machine without a GPU they form a gloo group.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "-m", "gdmd", "sample", *common]
    launch += ["--out", str(tmp_path / "two")]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "from 2 processes" in done.stdout

    assert (tmp_path / "two" / "index.jsonl").read_text() == (
        tmp_path / "one" / "index.jsonl"
    ).read_text()
    names = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(5)]
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.png"))
    for name in names:
        a = np.asarray(Image.open(tmp_path / "one" / name))
        b = np.asarray(Image.open(tmp_path / "two" / name))
        assert np.array_equal(a, b), name
