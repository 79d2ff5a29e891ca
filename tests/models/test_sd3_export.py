"""``gdmd export`` on a finished tiny SD3 run: what diffusers loads is the student, the model
card's snippet draws ``gdmd sample``'s image, and a run without ``student/`` exports alike."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from gdmd.cli import make_app

from .conftest import T5_TOKENS
from .test_sd3_run import sd3_recipe

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import StableDiffusion3Pipeline  # noqa: E402

from gdmd.models.sd3.export import CARD_FOLDER, CARD_PROMPT  # noqa: E402

PROMPTS = ["a red cat", "two blue dogs"]
TIMESTEPS = [1.0, 0.75, 0.5, 0.25]


def _cli(*args: str) -> Any:
    from gdmd.manager import build_plugin_manager

    return CliRunner().invoke(make_app(build_plugin_manager(load_entrypoints=False)), list(args))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, sd3_pipeline_dir: Path) -> Path:
    """A finished 4-step LoRA student (rank 4, alpha 8: alpha is not the rank)."""
    root = tmp_path_factory.mktemp("export-run")
    text = sd3_recipe(root / "runs", sd3_pipeline_dir, "tiny-sd3", share=True, steps=1)
    text = text.replace("steps = 2\ntimesteps = [1.0, 0.5]", f"steps = 4\ntimesteps = {TIMESTEPS}")
    (root / "recipe.toml").write_text(text)
    result = _cli("run", str(root / "recipe.toml"))
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny-sd3"


@pytest.fixture(scope="module")
def student(run_dir: Path) -> Any:
    """gdmd's own student, opened from the run."""
    from gdmd.manager import build_plugin_manager
    from gdmd.run.rundir import RunDir

    pm = build_plugin_manager(load_entrypoints=False)
    return RunDir.existing(run_dir).open(pm, rewards=False, device="cpu").student


@pytest.fixture(scope="module")
def lora_export(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "lora"
    result = _cli("export", str(run_dir), str(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def merged_export(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "merged"
    result = _cli("export", str(run_dir), str(out), "--format", "merged")
    assert result.exit_code == 0, result.output
    return out


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    return torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([0.9, 0.4])


def _pipeline_x0(pipe: Any, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 from the diffusers transformer alone (no gdmd code): x_t - t v."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_TOKENS
    )
    with torch.no_grad():
        velocity = pipe.transformer(
            hidden_states=x_t,
            timestep=t * 1000,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
    return x_t - t.view(-1, 1, 1, 1) * velocity


def _student_x0(student: Any, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return student.predict_x0(x_t, t, student.encode_prompts(PROMPTS))


def _generates(pipe: Any) -> None:
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        PROMPTS,
        sigmas=TIMESTEPS,
        guidance_scale=1.0,
        height=16,
        width=16,
        max_sequence_length=T5_TOKENS,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (2, 16, 16, 3)
    assert float(images.std()) > 0
    # The student's own times, used as given (shift 1), then 0.
    assert pipe.scheduler.sigmas.tolist() == pytest.approx([*TIMESTEPS, 0.0])


def test_lora_export_loads_with_load_lora_weights_as_the_student(
    lora_export: Path, student: Any, sd3_pipeline_dir: Path
) -> None:
    out = lora_export
    assert (out / "pytorch_lora_weights.safetensors").is_file()

    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe: Any = StableDiffusion3Pipeline.from_pretrained(sd3_pipeline_dir)
    x_t, t = _inputs()
    teacher_x0 = _pipeline_x0(pipe, x_t, t)
    pipe.load_lora_weights(out)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")
    loaded = pipe.transformer.peft_config[next(iter(pipe.transformer.peft_config))]
    assert (loaded.r, loaded.lora_alpha) == (4, 8.0)  # alpha != rank survived the file
    x0 = _pipeline_x0(pipe, x_t, t)
    torch.testing.assert_close(x0, _student_x0(student, x_t, t), rtol=1e-5, atol=1e-6)
    assert (x0 - teacher_x0).abs().max() > 1e-4  # the LoRA is not a no-op
    _generates(pipe)

    card = (out / "README.md").read_text()
    assert "base_model: " + str(sd3_pipeline_dir) in card
    assert str(TIMESTEPS) in card and "load_lora_weights" in card
    assert '[reward.red]\nkind = "channel"' in card  # the resolved recipe
    assert "`red`: `channel`, weight 1.0" in card
    assert f"| max_sequence_length (T5 tokens) | {T5_TOKENS} |" in card
    assert "| T5 text encoder | used |" in card
    assert "| teacher guidance scale in training | 2 |" in card


def test_merged_export_is_a_pipeline_that_is_the_student(
    merged_export: Path, student: Any
) -> None:
    out = merged_export
    pipe: Any = StableDiffusion3Pipeline.from_pretrained(out)
    assert not any("lora" in name for name, _ in pipe.transformer.named_parameters())
    assert pipe.scheduler.config.stochastic_sampling and pipe.scheduler.config.shift == 1.0
    x_t, t = _inputs()
    torch.testing.assert_close(
        _pipeline_x0(pipe, x_t, t), _student_x0(student, x_t, t), rtol=1e-5, atol=1e-5
    )
    _generates(pipe)
    assert json.loads((out / "gdmd_export.json").read_text())["timesteps"] == TIMESTEPS
    assert f"sigmas={TIMESTEPS}" in (out / "README.md").read_text()


def _card_snippet(export: Path) -> str:
    card = (export / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S)
    assert code is not None, card
    return code.group(1).replace(CARD_FOLDER, str(export))


def test_the_card_snippet_draws_gdmd_samples_image(
    run_dir: Path, lora_export: Path, merged_export: Path, tmp_path: Path
) -> None:
    """The card's diffusers code (run as written, diffusers alone, on the CPU) draws the image
    ``gdmd sample`` writes for the same prompt and seed, through all four stochastic steps."""
    (tmp_path / "prompts.txt").write_text(CARD_PROMPT + "\n")
    result = _cli(
        "sample", str(run_dir), "--prompts-file", str(tmp_path / "prompts.txt"),
        "--out", str(tmp_path / "sampled"), "--seed", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sampled = np.asarray(Image.open(tmp_path / "sampled" / "00000.png"), dtype=np.int16)

    for export in (lora_export, merged_export):
        namespace: dict[str, Any] = {}
        exec(compile(_card_snippet(export), str(export / "README.md"), "exec"), namespace)
        drawn = np.asarray(namespace["image"], dtype=np.int16)
        assert drawn.shape == sampled.shape == (16, 16, 3)
        # Equal up to one step of uint8 rounding ((x + 1) / 2 versus x / 2 + 0.5).
        assert int(np.abs(drawn - sampled).max()) <= 1, export.name
        assert float(sampled.std()) > 0


def test_export_reads_the_student_from_the_checkpoint(
    run_dir: Path, lora_export: Path, tmp_path: Path
) -> None:
    """An FSDP2 run writes no student/ folder: export reads the newest checkpoint alike."""
    copy = tmp_path / "runs" / "tiny-sd3"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "student")
    out = tmp_path / "from-checkpoint"
    result = _cli("export", str(copy), str(out))
    assert result.exit_code == 0, result.output
    ours = load_file(str(out / "pytorch_lora_weights.safetensors"))
    reference = load_file(str(lora_export / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == reference.keys() and len(ours) > 0
    for key, value in reference.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_export_errors_exit_2_with_a_message(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = _cli("export", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert missing.exit_code == 2 and "does not exist" in missing.output

    existing = tmp_path / "taken"
    existing.mkdir()
    taken = _cli("export", str(run_dir), str(existing))
    assert taken.exit_code == 2 and "already exists" in taken.output

    bad = _cli("export", str(run_dir), str(tmp_path / "out"), "--format", "onnx")
    assert bad.exit_code == 2 and "'sd3' student exports as lora, merged" in bad.output
    assert "'onnx'" in bad.output and not (tmp_path / "out").exists()

    from gdmd.run.rundir import RunDir

    real_open = RunDir.open

    def open_with_a_plain_student(self: RunDir, pm: Any, **options: Any) -> Any:
        run = real_open(self, pm, **options)
        run.student = torch.nn.Linear(1, 1)  # a model whose family cannot export
        return run

    monkeypatch.setattr(RunDir, "open", open_with_a_plain_student)
    plain = _cli("export", str(run_dir), str(tmp_path / "out"))
    assert plain.exit_code == 2 and "'sd3' model, which cannot export" in plain.output
    assert "Exportable" in plain.output and not (tmp_path / "out").exists()
