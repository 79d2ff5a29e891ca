"""Exporting an SDXL student as files diffusers loads without gdmd (``gdmd export``).

* ``lora``: diffusers' LoRA file (``pytorch_lora_weights.safetensors``, keys ``unet.<peft
  key>``, the ``LoraConfig`` in the safetensors metadata so an alpha that is not the rank
  survives) and the student's scheduler in ``scheduler/``:
  ``StableDiffusionXLPipeline.from_pretrained(base).load_lora_weights(OUT)`` gives the student.
* ``merged``: a complete ``StableDiffusionXLPipeline`` folder, the LoRA merged into the UNet in
  float32 and saved in the run's dtype (or the fully fine-tuned UNet), with the student's
  scheduler.

The student's scheduler is ``LCMScheduler``: each step predicts x0 and re-noises it with fresh
noise to the next timestep, DMD2's multi-step sampler (DMD2's own SDXL model card samples with
it at timesteps 999, 749, 499, 249 and guidance 0). Both formats write a model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gdmd_sdxl.common import EXPORT_METADATA, SDXLExportError
from gdmd_sdxl.lora import plain_copy, save_lora_file

if TYPE_CHECKING:
    from gdmd.interfaces import ExportInfo
    from gdmd_sdxl.model import SDXLModel

EXPORT_FORMATS: tuple[str, ...] = ("lora", "merged")
#: Where the card's snippet names the export folder: the card does not know where it will live.
CARD_FOLDER = "PATH/TO/THIS/FOLDER"
CARD_PROMPT = "a photo of a red fox in the snow"


def export_sdxl(model: SDXLModel, directory: Path, format: str, info: ExportInfo) -> list[Path]:
    """Write ``model`` (a trained student) to ``directory`` in ``format``; the main file first."""
    if format not in EXPORT_FORMATS:
        raise SDXLExportError(
            f"an sdxl model exports as {', '.join(EXPORT_FORMATS)}, not {format!r}"
        )
    timesteps = scheduler_timesteps(model, info.student_timesteps)
    if format == "lora":
        _check_lora_exportable(model, info.run_dir)
        directory.mkdir(parents=True)
        assert model.adapter is not None
        main = save_lora_file(model.unet, model.adapter, directory)
        _student_scheduler(model).save_pretrained(directory / "scheduler")
    else:
        _merged_pipeline(model, info.dtype).save_pretrained(directory, safe_serialization=True)
        main = directory / "model_index.json"
    notes = {
        "format": f"gdmd-sdxl-{format}-export",
        "base": model.shared.pipeline.model,
        "revision": model.shared.pipeline.revision,
        "vae": model.shared.vae_ref.model if model.shared.vae_ref is not None else None,
        "student_times": [float(t) for t in info.student_timesteps],
        "timesteps": timesteps,
        "guidance_scale": 0.0,
        "resolution": model.resolution,
    }
    (directory / EXPORT_METADATA).write_text(json.dumps(notes, indent=2) + "\n")
    card = directory / "README.md"
    card.write_text(model_card(model, format, info))
    return [main, card, directory / EXPORT_METADATA]


def scheduler_timesteps(model: SDXLModel, times: list[float]) -> list[int]:
    """The scheduler timesteps ``1000 t - 1`` of the student's times; they must be whole (the
    pipeline takes integer timesteps), as gdmd's default times 1, 0.75, 0.5, 0.25 are."""
    steps = model.schedule.timestep(torch.tensor([float(t) for t in times], dtype=torch.float64))
    rounded = [int(round(float(k))) for k in steps]
    if any(abs(float(k) - r) > 1e-3 for k, r in zip(steps, rounded, strict=True)):
        raise SDXLExportError(
            f"the student's times {list(times)} are scheduler timesteps {steps.tolist()}, not "
            "whole ones, so no diffusers scheduler samples them; train with times t = (k + 1) / "
            f"{model.schedule.num_train_timesteps} (e.g. 1.0, 0.75, 0.5, 0.25)"
        )
    return rounded


def _check_lora_exportable(model: SDXLModel, run_dir: Path) -> None:
    if model.lora is None:
        raise SDXLExportError(
            f"the student of {run_dir} is fully fine-tuned, not a LoRA: export it with "
            "--format merged"
        )
    pipeline = model.shared.pipeline
    if model.base is None or (model.base.model, model.base.subfolder) != (pipeline.model, "unet"):
        raise SDXLExportError(
            f"the student's LoRA of {run_dir} sits on a UNet that is not the pipeline's own "
            f"({pipeline.model}), so load_lora_weights on that pipeline would not give the "
            "student: export it with --format merged"
        )


def _student_scheduler(model: SDXLModel) -> Any:
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(model.shared.scheduler_config)


def _merged_pipeline(model: SDXLModel, dtype: torch.dtype | None) -> Any:
    from diffusers import StableDiffusionXLPipeline

    shared = model.shared
    return StableDiffusionXLPipeline(
        vae=shared.vae,
        text_encoder=shared.text_encoder,
        text_encoder_2=shared.text_encoder_2,
        tokenizer=shared.tokenizer,
        tokenizer_2=shared.tokenizer_2,
        unet=plain_copy(model.unet, model.adapter, merge=True, dtype=dtype),
        scheduler=_student_scheduler(model),
        force_zeros_for_empty_prompt=shared.force_zeros_for_empty_prompt,
    )


def load_code(model: SDXLModel, format: str, info: ExportInfo) -> str:
    """The model card's diffusers snippet."""
    dtype = str(info.dtype or torch.float32).removeprefix("torch.")
    source = model.shared.pipeline.model if format == "lora" else CARD_FOLDER
    lines = [
        "import torch",
        "from diffusers import LCMScheduler, StableDiffusionXLPipeline",
        "",
    ]
    vae = model.shared.vae_ref
    if vae is not None and format == "lora":
        lines += [
            "from diffusers import AutoencoderKL",
            "",
            f'vae = AutoencoderKL.from_pretrained("{vae.model}", torch_dtype=torch.{dtype})',
        ]
    extra = ", vae=vae" if vae is not None and format == "lora" else ""
    lines += [
        "pipe = StableDiffusionXLPipeline.from_pretrained(",
        f'    "{source}", torch_dtype=torch.{dtype}{extra}',
        ")",
    ]
    if format == "lora":
        lines += [
            f'pipe.load_lora_weights("{CARD_FOLDER}")',
            "# DMD2's sampler: predict x0, re-noise it with fresh noise to the next timestep.",
            "pipe.scheduler = LCMScheduler.from_pretrained(",
            f'    "{CARD_FOLDER}", subfolder="scheduler"',
            ")",
        ]
    lines += [
        'pipe.to("cuda" if torch.cuda.is_available() else "cpu")',
        "image = pipe(",
        f'    "{CARD_PROMPT}",',
        f"    timesteps={scheduler_timesteps(model, info.student_timesteps)},",
        "    guidance_scale=0.0,  # the teacher's guidance is distilled in",
        f"    height={model.resolution},",
        f"    width={model.resolution},",
        "    generator=torch.Generator().manual_seed(0),",
        ").images[0]",
    ]
    return "\n".join(lines)


def model_card(model: SDXLModel, format: str, info: ExportInfo) -> str:
    """The ``README.md`` of an export: what the student is, its sampler settings, a diffusers
    snippet and the run's resolved recipe."""
    base = model.shared.pipeline.model
    lora = model.lora
    if lora is not None and format == "lora":
        what = f"a LoRA (rank {lora.rank}, alpha {lora.alpha:g}, scale {lora.scale:g}) on `{base}`"
    elif lora is not None:
        what = f"a complete diffusers pipeline (LoRA rank {lora.rank} merged in float32)"
    else:
        what = "a complete diffusers pipeline (fully fine-tuned UNet)"
    guidance = info.teacher_guidance_scale
    rows = [
        ("sampling steps", str(len(info.student_timesteps))),
        ("timesteps (scheduler)", f"`{scheduler_timesteps(model, info.student_timesteps)}`"),
        ("gdmd times", f"`{list(info.student_timesteps)}`"),
        ("guidance scale when sampling", "0 (no CFG: the teacher's guidance is distilled in)"),
        ("teacher guidance scale in training", "?" if guidance is None else f"{guidance:g}"),
        ("VAE", f"`{model.shared.vae_ref.model}`" if model.shared.vae_ref else "the pipeline's"),
        ("resolution", f"{model.resolution} x {model.resolution}"),
        ("dtype", str(info.dtype or torch.float32).removeprefix("torch.")),
        ("target", f"`{info.target}`"),
        ("student updates", str(info.step)),
    ]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    recipe = (
        f"The run's resolved recipe:\n\n```toml\n{info.recipe_text.rstrip()}\n```\n"
        if info.recipe_text
        else ""
    )
    return f"""---
base_model: {base}
library_name: diffusers
pipeline_tag: text-to-image
tags:
- stable-diffusion-xl
- distillation
- gdmd
---

# {info.run_name}: a {len(info.student_timesteps)}-step student

{what}, distilled by gdmd.

{table}

## Sampling

`LCMScheduler` predicts x0 at each timestep and re-noises it with fresh noise to the next one,
as the student was trained (DMD2's multi-step sampler); pass the timesteps with every call.

```python
{load_code(model, format, info)}
```

## Recipe

{recipe}"""
