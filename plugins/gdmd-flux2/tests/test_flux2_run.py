"""The ``flux2`` family through gdmd's command line on the tiny pipeline: ``gdmd run`` of two
``gdmd`` updates, then ``gdmd export`` as a LoRA that diffusers' own
``Flux2KleinPipeline.load_lora_weights`` loads into the student, and as a merged pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from flux2_tiny import RESOLUTION, TOKENS
from safetensors import safe_open

from gdmd.interfaces import BuildContext

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline  # noqa: E402

from gdmd_flux2.config import Flux2Config  # noqa: E402
from gdmd_flux2.loading import build_flux2  # noqa: E402
from gdmd_flux2.model import Flux2Model  # noqa: E402
from gdmd_flux2.parts import unpack  # noqa: E402

TIMESTEPS = [1.0, 0.5]


def flux2_recipe(out: Path, pipeline: Path) -> str:
    model = f'kind = "flux2"\nmax_sequence_length = {TOKENS}'
    return f"""
[run]
name = "tiny-flux2"
seed = 3
output_dir = "{out}"

[teacher]
{model}
model = "{pipeline}"
resolution = {RESOLUTION}
guidance_scale = 2.0

[student]
{model}
init_from = "teacher"
steps = 2
timesteps = {TIMESTEPS}
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
vary = "t"

[prompts]
kind = "list"
prompts = ["a red cat", "two blue dogs", "a cat"]

[train]
steps = 2
batch_size = 2
critic_steps = 1
student_lr = 1e-2
critic_lr = 1e-2
checkpoint_every = 1

[log]
trackers = ["jsonl"]
"""


def _gdmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gdmd", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, flux2_pipeline_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("flux2-run")
    (root / "recipe.toml").write_text(flux2_recipe(root / "runs", flux2_pipeline_dir))
    result = _gdmd("run", str(root / "recipe.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "runs" / "tiny-flux2"


@pytest.fixture(scope="module")
def student(run_dir: Path) -> Flux2Model:
    """The trained student as the run saved it (``student/``, this family's own format)."""
    ctx = BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
        components={"role": "student"},
    )
    return build_flux2(Flux2Config(model=str(run_dir / "student")), ctx)


def _inputs(model: Flux2Model) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(4)
    x_t = torch.randn(2, *model.sample_shape, generator=generator)
    t = torch.tensor([0.9, 0.4])
    return x_t, t, model.encode_prompts(["a red cat", "two blue dogs"])


def _transformer_x0(transformer: Any, model: Flux2Model) -> torch.Tensor:
    """``model``'s x0-prediction computed with another transformer in its place."""
    own = model.transformer
    model.transformer = transformer
    try:
        with torch.no_grad():
            return model.predict_x0(*_inputs(model))
    finally:
        model.transformer = own


def test_two_gdmd_updates_train_the_student(run_dir: Path, student: Flux2Model) -> None:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {line["step"] for line in lines if "step" in line}
    assert {1, 2} <= steps
    assert student.lora is not None and (student.lora.rank, student.lora.alpha) == (4, 8.0)
    # Trained: B started at zero and moved.
    b_weights = [w for k, w in student.lora_weights().items() if ".lora_B." in k]
    assert b_weights and all(float(w.detach().abs().max()) > 0 for w in b_weights)


def test_lora_export_loads_into_the_pipeline_as_the_student(
    run_dir: Path, student: Flux2Model, flux2_pipeline_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lora"
    result = _gdmd("export", str(run_dir), str(out), "--format", "lora")
    assert result.returncode == 0, result.stdout + result.stderr
    weights = out / "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert json.loads(metadata["lora_adapter_metadata"])["transformer.lora_alpha"] == 8.0
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    assert "load_lora_weights" in (out / "README.md").read_text()

    # The snippet of docs/models/flux2.md and of the model card.
    pipe = Flux2KleinPipeline.from_pretrained(flux2_pipeline_dir, dtype=torch.float32)
    pipe.load_lora_weights(out)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")

    expected = _transformer_x0(student.transformer, student)
    loaded = _transformer_x0(pipe.transformer, student)
    base = _transformer_x0(Flux2KleinPipeline.from_pretrained(flux2_pipeline_dir).transformer,
                           student)
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5)
    assert (expected - base).abs().max() > 1e-4  # the LoRA changes the outputs

    # The card's sampling call draws what the student's few-step sampler draws: x0 at each
    # time, re-noised with fresh noise to the next. diffusers draws that noise from torch's
    # global generator, in the packed token layout [B, h * w, C] (the starting noise, from
    # `generator`, in the unpacked one).
    torch.manual_seed(7)
    with torch.no_grad():
        image = pipe(
            prompt="a red cat",
            sigmas=TIMESTEPS,
            guidance_scale=1.0,
            max_sequence_length=TOKENS,
            height=RESOLUTION,
            width=RESOLUTION,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images
        torch.manual_seed(7)
        x = torch.randn(1, *student.sample_shape, generator=torch.Generator().manual_seed(0))
        cond = student.encode_prompts(["a red cat"])
        for now, after in zip(TIMESTEPS, [*TIMESTEPS[1:], 0.0], strict=True):
            x0 = student.predict_x0(x, torch.tensor([now]), cond)
            packed_noise = torch.randn(1, x0.shape[2] * x0.shape[3], x0.shape[1])
            x = (1.0 - after) * x0 + after * unpack(packed_noise, *x0.shape[2:])
        ours = student.decoder.decode(x0)
    torch.testing.assert_close(image, ours, rtol=1e-4, atol=1e-4)


def test_merged_export_is_the_student(
    run_dir: Path, student: Flux2Model, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    result = _gdmd("export", str(run_dir), str(out), "--format", "merged")
    assert result.returncode == 0, result.stdout + result.stderr
    pipe = Flux2KleinPipeline.from_pretrained(out)
    assert pipe.config.is_distilled is True
    scheduler = pipe.scheduler.config
    assert (scheduler.shift, scheduler.use_dynamic_shifting, scheduler.stochastic_sampling) == (
        1.0,
        False,
        True,
    )
    merged = _transformer_x0(pipe.transformer, student)
    torch.testing.assert_close(merged, _transformer_x0(student.transformer, student),
                               rtol=1e-5, atol=1e-5)


RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "flux2_4step.toml"


@pytest.mark.skipif(not RECIPE.is_file(), reason="not in the gdmd repository")
def test_the_shipped_recipe_validates() -> None:
    result = _gdmd("validate", str(RECIPE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "teacher flux2" in result.stdout and "student flux2 (4 steps)" in result.stdout
