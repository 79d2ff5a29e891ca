"""The ``sdxl`` family through the CLI on the tiny pipeline: ``gdmd run`` (2 GDMD updates),
then ``gdmd export`` as a diffusers LoRA and as a merged pipeline, loaded by diffusers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from sdxl_testkit import LATENT_SIDE, save_tiny_sdxl_pipeline, sdxl_plugin_manager

from gdmd.interfaces import BuildContext

if not any(ep.name == "sdxl" for ep in entry_points(group="gdmd")):
    pytest.skip(
        "gdmd-sdxl is not installed (pip install -e plugins/gdmd-sdxl)", allow_module_level=True
    )

PROMPTS = ["a red cat", "two blue dogs"]


def _recipe(out: Path, pipeline: Path) -> str:
    return f"""
[run]
name = "tiny-sdxl"
seed = 3
output_dir = "{out}"

[teacher]
kind = "sdxl"
model = "{pipeline}"
guidance_scale = 3.0

[student]
init_from = "teacher"
steps = 2
lora_rank = 4
lora_alpha = 8.0

[critic]
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

[log]
trackers = ["jsonl"]
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``gdmd`` command, which finds this plugin through its entry point."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "gdmd", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, pipeline_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("sdxl-run")
    (root / "recipe.toml").write_text(_recipe(root / "runs", pipeline_dir))
    result = _cli("run", str(root / "recipe.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "runs" / "tiny-sdxl"


@pytest.fixture(scope="module")
def student(run_dir: Path) -> Any:
    """The trained student, from the folder the run saved it to (``save_pretrained``)."""
    ctx = BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
        components={"role": "student"},
    )
    spec = sdxl_plugin_manager().registries.models.get("sdxl")
    return spec.build({"model": str(run_dir / "student")}, ctx)


def _unet_inputs(pipe: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], Any]:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, LATENT_SIDE, LATENT_SIDE, generator=generator)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    time_ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32, 8).expand(2, -1)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    return x, torch.tensor([999, 499]), added, embeds


def _student_eps(student: Any, x: torch.Tensor) -> torch.Tensor:
    cond = student.encode_prompts(PROMPTS)
    t = torch.tensor([1.0, 0.5])
    x0 = student.predict_x0(x, t, cond)
    return student.schedule.from_x0(x, t, x0)


def test_two_gdmd_updates_train_the_student_lora(run_dir: Path, student: Any) -> None:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "step" in line][-1] == 2
    assert student.lora is not None and student.lora.alpha == 8.0
    b_weights = [p for n, p in student.named_parameters() if ".lora_B." in n]
    assert b_weights and all(bool(p.abs().sum() > 0) for p in b_weights)  # B starts at zero


def test_lora_export_loads_into_the_diffusers_pipeline(
    run_dir: Path, student: Any, pipeline_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lora"
    result = _cli("export", str(run_dir), str(out), "--format", "lora")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    notes = json.loads((out / "gdmd_export.json").read_text())
    assert notes["timesteps"] == [999, 499]
    assert "load_lora_weights" in (out / "README.md").read_text()

    pipe = StableDiffusionXLPipeline.from_pretrained(pipeline_dir)
    x, timesteps, added, embeds = _unet_inputs(pipe)
    with torch.no_grad():
        before = pipe.unet(x, timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added)
        pipe.load_lora_weights(out)
        after = pipe.unet(x, timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added)
        ours = _student_eps(student, x)
    # alpha 8 / rank 4 survives through the metadata: the loaded LoRA is the student.
    assert torch.allclose(after.sample, ours, atol=1e-4), (after.sample - ours).abs().max()
    assert not torch.allclose(before.sample, ours, atol=1e-3)


def test_merged_export_is_a_pipeline_with_the_student_unet(
    run_dir: Path, student: Any, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    result = _cli("export", str(run_dir), str(out), "--format", "merged")
    assert result.returncode == 0, result.stdout + result.stderr
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    x, timesteps, added, embeds = _unet_inputs(pipe)
    with torch.no_grad():
        eps = pipe.unet(x, timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        ours = _student_eps(student, x)
    assert torch.allclose(eps, ours, atol=1e-4), (eps - ours).abs().max()
