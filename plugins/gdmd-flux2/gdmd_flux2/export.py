"""Exporting a FLUX.2 student as files diffusers loads without gdmd (``gdmd export``).

* ``lora``: diffusers' LoRA file (``pytorch_lora_weights.safetensors``, keys
  ``transformer.<peft key>``, the ``LoraConfig`` in the safetensors metadata so an alpha that
  is not the rank survives), plus the student's scheduler config in ``scheduler/``.
  ``Flux2KleinPipeline.from_pretrained(base).load_lora_weights(OUT)`` gives the student.
* ``merged``: a complete ``Flux2KleinPipeline`` folder, the LoRA merged into the transformer
  in float32 and saved in the run's dtype, ``is_distilled = true`` (the student samples
  without CFG) and its scheduler set up for the student's few-step sampler.

Both write a model card ``README.md`` with the settings the student's sampler needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gdmd_flux2.parts import EXPORT_METADATA, LORA_WEIGHTS, Flux2ExportError

if TYPE_CHECKING:
    from gdmd.interfaces import ExportInfo
    from gdmd_flux2.model import Flux2Model

EXPORT_FORMATS: tuple[str, ...] = ("lora", "merged")
#: Where the card's snippet names the export folder: the card does not know where it lives.
CARD_FOLDER = "PATH/TO/THIS/FOLDER"
CARD_PROMPT = "a photo of a red fox in the snow"


def student_scheduler_config(scheduler_config: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's scheduler config set up for DMD's few-step sampler: stochastic sampling
    (each step predicts x0 and re-noises it with fresh noise to the next time) and a fixed
    shift of 1 without dynamic shifting, so the ``sigmas`` passed to the pipeline are used as
    given (the pipeline still computes its ``mu``; the scheduler then ignores it)."""
    config = dict(scheduler_config)
    config.update(shift=1.0, use_dynamic_shifting=False, stochastic_sampling=True)
    return config


def export_flux2(model: Flux2Model, directory: Path, format: str, info: ExportInfo) -> list[Path]:
    """Write ``model`` (a trained student) to ``directory`` in ``format`` (module doc);
    return the files written, the main one first."""
    if format not in EXPORT_FORMATS:
        raise Flux2ExportError(
            f"a flux2 model exports as {', '.join(EXPORT_FORMATS)}, not {format!r}"
        )
    times = [float(t) for t in info.student_timesteps]
    if format == "lora":
        if model.lora is None:
            raise Flux2ExportError(
                f"the student of {info.run_dir} is fully fine-tuned, not a LoRA: export it "
                "with --format merged"
            )
        if model.base is None:
            raise Flux2ExportError(
                f"the student's LoRA of {info.run_dir} sits on a transformer that is not the "
                f"pipeline's own ({model.shared.pipeline.model}), so load_lora_weights on that "
                "pipeline would not give the student: export it with --format merged"
            )
        directory.mkdir(parents=True)
        from gdmd_flux2.model import save_lora_file

        main = save_lora_file(model, directory)
        _scheduler(model).save_pretrained(directory / "scheduler")
    else:
        main = _write_pipeline(model, directory, info.dtype)
    notes = {
        "format": f"gdmd-flux2-{format}-export",
        "base": model.shared.pipeline.model,
        "revision": model.shared.pipeline.revision,
        "timesteps": times,
        "guidance_scale": 1.0,
        "max_sequence_length": model.max_sequence_length,
        "text_encoder_out_layers": list(model.text_encoder_layers),
        "resolution": model.resolution,
    }
    (directory / EXPORT_METADATA).write_text(json.dumps(notes, indent=2) + "\n")
    card = directory / "README.md"
    card.write_text(model_card(model, format, info))
    return [main, card, directory / EXPORT_METADATA]


def _scheduler(model: Flux2Model) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = student_scheduler_config(model.shared.scheduler_config)
    return FlowMatchEulerDiscreteScheduler.from_config(config)


def _write_pipeline(model: Flux2Model, directory: Path, dtype: torch.dtype | None) -> Path:
    from diffusers import Flux2KleinPipeline

    from gdmd_flux2.model import plain_copy

    shared = model.shared
    pipe: Any = Flux2KleinPipeline(
        transformer=plain_copy(model, merge=True, dtype=dtype),
        scheduler=_scheduler(model),
        vae=shared.vae,
        text_encoder=shared.text_encoder,
        tokenizer=shared.tokenizer,
        is_distilled=True,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory / "model_index.json"


def load_code(model: Flux2Model, format: str, info: ExportInfo) -> str:
    """The model card's diffusers snippet: load the export and sample the student."""
    dtype = str(info.dtype or torch.float32).removeprefix("torch.")
    source = model.shared.pipeline.model if format == "lora" else CARD_FOLDER
    lines = [
        "import torch",
        "from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline",
        "",
        f'pipe = Flux2KleinPipeline.from_pretrained("{source}", dtype=torch.{dtype})',
    ]
    if format == "lora":
        lines += [
            f'pipe.load_lora_weights("{CARD_FOLDER}")',
            "# The student's sampler: predict x0, re-noise it with fresh noise, at exactly the",
            "# times it was trained at (shift 1, no dynamic shifting).",
            "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(",
            f'    "{CARD_FOLDER}", subfolder="scheduler"',
            ")",
        ]
    lines += [
        'pipe.to("cuda" if torch.cuda.is_available() else "cpu")',
        "image = pipe(",
        f'    prompt="{CARD_PROMPT}",',
        f"    sigmas={list(info.student_timesteps)},",
        "    guidance_scale=1.0,",
        f"    max_sequence_length={model.max_sequence_length},",
        f"    text_encoder_out_layers={tuple(model.text_encoder_layers)},",
        f"    height={model.resolution},",
        f"    width={model.resolution},",
        "    generator=torch.Generator().manual_seed(0),",
        ").images[0]",
    ]
    return "\n".join(lines)


def model_card(model: Flux2Model, format: str, info: ExportInfo) -> str:
    """The ``README.md`` of an export: what the student is, its sampler, and the recipe."""
    base = model.shared.pipeline.model
    lora = model.lora
    if lora is not None and format == "lora":
        what = f"a LoRA (rank {lora.rank}, alpha {lora.alpha:g}, scale {lora.scale:g}) on `{base}`"
    elif lora is not None:
        what = "a complete diffusers pipeline (LoRA merged into the weights in float32)"
    else:
        what = "a complete diffusers pipeline (fully fine-tuned transformer)"
    guidance = info.teacher_guidance_scale
    rows = [
        ("sampling steps", str(len(info.student_timesteps))),
        ("timesteps (flow time, = sigmas)", f"`{list(info.student_timesteps)}`"),
        ("guidance scale when sampling", "1.0 (no CFG: the teacher's guidance is distilled in)"),
        ("teacher guidance scale in training", "?" if guidance is None else f"{guidance:g}"),
        ("max_sequence_length (Qwen3 tokens)", str(model.max_sequence_length)),
        ("resolution", f"{model.resolution} x {model.resolution}"),
        ("target", f"`{info.target}`"),
        ("student updates", str(info.step)),
    ]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    recipe = (
        f"The run's resolved recipe:\n\n```toml\n{info.recipe_text.rstrip()}\n```\n"
        if info.recipe_text
        else ""
    )
    weights = LORA_WEIGHTS if format == "lora" else "transformer/"
    return f"""---
base_model: {base}
library_name: diffusers
pipeline_tag: text-to-image
tags:
- flux2
- distillation
- gdmd
---

# {info.run_name}: a {len(info.student_timesteps)}-step student

{what}, distilled by gdmd (weights: `{weights}`).

{table}

## Sampling

The scheduler is `FlowMatchEulerDiscreteScheduler` with `shift = 1.0`, no dynamic shifting and
`stochastic_sampling = true`: each step predicts x0 and re-noises it with fresh noise to the
next time, as the student was trained (DMD2's multi-step sampler). Pass the student's times
with every call as `sigmas=`.

```python
{load_code(model, format, info)}
```

## Recipe

{recipe}"""
