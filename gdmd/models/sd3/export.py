"""Exporting an SD3 model as files diffusers loads without gdmd (``gdmd export``).

Two formats (:data:`EXPORT_FORMATS`):

* ``lora``: diffusers' LoRA file (``pytorch_lora_weights.safetensors``, keys
  ``transformer.<peft key>``, the ``LoraConfig`` in the safetensors metadata so an alpha that
  is not the rank survives), plus the student's scheduler config in ``scheduler/``.
  ``StableDiffusion3Pipeline.from_pretrained(base).load_lora_weights(OUT)`` gives the student.
* ``merged``: a complete ``StableDiffusion3Pipeline`` directory with the LoRA merged into the
  transformer weights in float32 and saved in the run's dtype (or the fully fine-tuned
  transformer), its scheduler set up for the student's few-step sampler.

Both write a model card ``README.md`` with every setting a sampler needs to draw what
``gdmd sample`` draws: timesteps, guidance 1.0, ``max_sequence_length``, T5 on or off,
resolution, dtype and the seeding, in a diffusers snippet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gdmd.hub import dtype_kwarg
from gdmd.models.sd3.adapters import LORA_WEIGHTS, _plain_copy, save_lora_file
from gdmd.models.sd3.common import (
    EXPORT_METADATA,
    SD3ConfigError,
    SD3ExportError,
)

if TYPE_CHECKING:
    from gdmd.interfaces import ExportInfo
    from gdmd.models.sd3.encoders import SD3SharedComponents
    from gdmd.models.sd3.model import SD3Model

EXPORT_FORMATS: tuple[str, ...] = ("lora", "merged")

#: The seed of the re-noising draws of ``gdmd sample`` for an image of seed ``s`` sampled
#: alone (``gdmd.eval.harness.generate``); the model card's snippet seeds torch with it.
RENOISE_SEED = "seed * 7919 + 1"

#: The prompt of the model card's snippet.
CARD_PROMPT = "a photo of a red fox in the snow"
#: Where the snippet names the export folder: the card does not know where it will live.
CARD_FOLDER = "PATH/TO/THIS/FOLDER"


def export_sd3(model: SD3Model, directory: Path, format: str, info: ExportInfo) -> list[Path]:
    """Write ``model`` (a trained student) to ``directory`` in ``format``; see the module doc.

    Returns the files written, the main one first.
    """
    if format not in EXPORT_FORMATS:
        raise SD3ExportError(
            f"an sd3 model exports as {', '.join(EXPORT_FORMATS)}, not {format!r}"
        )
    timesteps = [float(t) for t in info.student_timesteps]
    if format == "lora":
        _check_lora_exportable(model, info.run_dir)
        directory.mkdir(parents=True)
        main = _write_lora(model, directory, timesteps)
    else:
        export_pipeline(model, directory, student_timesteps=timesteps, dtype=info.dtype)
        main = directory / "model_index.json"
    card = directory / "README.md"
    card.write_text(model_card(model, format, info))
    return [main, card, directory / EXPORT_METADATA]


def _check_lora_exportable(model: SD3Model, run_dir: Path) -> None:
    if model.lora is None:
        raise SD3ExportError(
            f"the student of {run_dir} is fully fine-tuned, not a LoRA: export it with "
            "--format merged"
        )
    pipeline = model.shared.pipeline
    if model.base is None or (model.base.model, model.base.subfolder) != (
        pipeline.model,
        "transformer",
    ):
        raise SD3ExportError(
            f"the student's LoRA of {run_dir} sits on a transformer that is not the pipeline's "
            f"own ({pipeline.model}), so load_lora_weights on that pipeline would not give the "
            "student: export it with --format merged"
        )


def _write_lora(model: SD3Model, directory: Path, timesteps: list[float]) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler

    save_lora_file(model, directory)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        student_scheduler_config(model.shared.scheduler_config)
    )
    scheduler.save_pretrained(directory / "scheduler")
    notes = {
        "format": "gdmd-sd3-lora-export",
        "base": model.shared.pipeline.model,
        "revision": model.shared.pipeline.revision,
        "timesteps": timesteps,
        "guidance_scale": 1.0,
        "without_t5": not model.shared.uses_t5,
        "max_sequence_length": model.max_sequence_length,
        "resolution": model.resolution,
    }
    (directory / EXPORT_METADATA).write_text(json.dumps(notes, indent=2) + "\n")
    return directory / LORA_WEIGHTS


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype or torch.float32).removeprefix("torch.")


def load_code(model: SD3Model, format: str, info: ExportInfo) -> str:
    """The model card's diffusers snippet: load the export and draw ``gdmd sample``'s image
    of :data:`CARD_PROMPT` at seed 0 (exactly on the CPU; see :func:`model_card`)."""
    no_t5 = not model.shared.uses_t5
    t5 = ", text_encoder_3=None, tokenizer_3=None" if no_t5 else ""
    dtype = _dtype_name(info.dtype)
    source = model.shared.pipeline.model if format == "lora" else CARD_FOLDER
    lines = [
        "import torch",
        "from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline",
        "",
        "pipe = StableDiffusion3Pipeline.from_pretrained(",
        f'    "{source}", torch_dtype=torch.{dtype}{t5}',
        ")",
    ]
    if format == "lora":
        lines += [
            f'pipe.load_lora_weights("{CARD_FOLDER}")',
            "# The student's sampler: predict x0, re-noise it with fresh noise (stochastic),",
            "# at exactly the times it was trained at (shift 1).",
            "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(",
            f'    "{CARD_FOLDER}", subfolder="scheduler"',
            ")",
        ]
    lines += [
        'pipe.to("cuda" if torch.cuda.is_available() else "cpu")',
        f'prompt, seed = "{CARD_PROMPT}", 0',
        "# gdmd sample's draws: the starting latents from a CPU generator seeded with `seed`;",
        "# the re-noising between steps from torch's global generator (diffusers' scheduler",
        f"# draws it there), seeded with {RENOISE_SEED}.",
        f"torch.manual_seed({RENOISE_SEED})",
        "image = pipe(",
        "    prompt,",
        f"    sigmas={list(info.student_timesteps)},",
        "    guidance_scale=1.0,",
        f"    max_sequence_length={model.max_sequence_length},",
        f"    height={model.resolution},",
        f"    width={model.resolution},",
        "    generator=torch.Generator().manual_seed(seed),",
        ").images[0]",
    ]
    return "\n".join(lines)


def export_pipeline(
    model: SD3Model,
    directory: str | Path,
    *,
    student_timesteps: Sequence[float] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a standalone diffusers pipeline that ``StableDiffusion3Pipeline.from_pretrained``
    loads, with any LoRA merged into the transformer weights.

    Without ``student_timesteps`` the scheduler is the source pipeline's (deterministic Euler)
    with the model's ``shift``: right for a teacher or a fully fine-tuned model.

    With ``student_timesteps`` (the few-step student's flow times, e.g. ``[1.0, 0.75, 0.5,
    0.25]``) the scheduler is set up for DMD's multi-step sampler: ``stochastic_sampling=True``
    (predict x0, re-noise it with fresh noise to the next time) and ``shift=1.0`` so the
    times passed as ``sigmas`` are used as given. Sample with
    ``pipe(prompt, sigmas=timesteps, guidance_scale=1.0)``.

    A model loaded with ``drop_t5`` is exported without T5 (it was trained on zeros in the T5
    slot); diffusers then needs ``from_pretrained(dir, text_encoder_3=None,
    tokenizer_3=None)``. ``gdmd_export.json`` records the timesteps and the loading call.

    ``dtype`` (default: the transformer's) is what the merged transformer is saved in; the
    merge itself is computed in float32 (see :func:`~gdmd.models.sd3.adapters._plain_copy`).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    shared = model.shared
    scheduler_config = dict(shared.scheduler_config)
    times: list[float] | None = None
    if student_timesteps is None:
        scheduler_config["shift"] = model.schedule.shift
    else:
        times = [float(t) for t in student_timesteps]
        if not times or any(not 0.0 < t <= 1.0 for t in times) or _not_decreasing(times):
            raise SD3ConfigError(
                f"student_timesteps must be decreasing flow times in (0, 1], got {times}"
            )
        scheduler_config = student_scheduler_config(scheduler_config)
    text = _text_components(shared)
    pipe: Any = StableDiffusion3Pipeline(
        transformer=_plain_copy(model, merge=True, dtype=dtype),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
        vae=shared.vae,
        **text,
    )
    directory = Path(directory)
    pipe.save_pretrained(directory, safe_serialization=True)

    without_t5 = not shared.uses_t5
    load = "StableDiffusion3Pipeline.from_pretrained(dir" + (
        ", text_encoder_3=None, tokenizer_3=None)" if without_t5 else ")"
    )
    sample = "pipe(prompt, sigmas=timesteps, guidance_scale=1.0)" if times else "pipe(prompt)"
    notes = {
        "format": "gdmd-sd3-export",
        "role": model.role,
        "timesteps": times,
        "guidance_scale": 1.0 if times else None,
        "without_t5": without_t5,
        "load": load,
        "sample": sample,
    }
    (directory / EXPORT_METADATA).write_text(json.dumps(notes, indent=2) + "\n")
    return directory


def student_scheduler_config(scheduler_config: Mapping[str, Any]) -> dict[str, Any]:
    """The source pipeline's ``FlowMatchEulerDiscreteScheduler`` config set up for DMD's
    few-step sampler: ``stochastic_sampling`` (each step predicts x0 and re-noises it with
    fresh noise to the next time, as :func:`gdmd.sampling.consistency_sample` does) and
    ``shift = 1`` without dynamic shifting, so the ``sigmas`` passed to the pipeline are the
    times the student was trained at."""
    config = dict(scheduler_config)
    config.update(shift=1.0, stochastic_sampling=True, use_dynamic_shifting=False)
    return config


def _not_decreasing(values: list[float]) -> bool:
    return any(later >= earlier for earlier, later in zip(values, values[1:], strict=False))


def _what(model: SD3Model, format: str) -> str:
    lora = model.lora
    base = model.shared.pipeline.model
    if lora is not None and format == "lora":
        return f"a LoRA (rank {lora.rank}, alpha {lora.alpha:g}, scale {lora.scale:g}) on `{base}`"
    if lora is not None:
        return (
            f"a complete diffusers pipeline (LoRA rank {lora.rank}, alpha {lora.alpha:g}, "
            "merged into the weights in float32)"
        )
    return "a complete diffusers pipeline (fully fine-tuned transformer)"


def _text_components(shared: SD3SharedComponents) -> dict[str, Any]:
    """The pipeline's text encoders and tokenizers: the model's own, or, for a model built
    without them (``text_encoders = "none"``), loaded from its pipeline for the export."""
    names = ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    names += ["text_encoder_3", "tokenizer_3"]
    if shared.has_encoders:
        return {name: getattr(shared, name) for name in names}
    from diffusers import StableDiffusion3Pipeline


    ref = shared.pipeline
    skip = {"transformer": None, "vae": None}
    if not shared.uses_t5:
        skip.update(text_encoder_3=None, tokenizer_3=None)
    source = StableDiffusion3Pipeline.from_pretrained(
        ref.model,
        revision=ref.revision,
        variant=ref.variant,
        **dtype_kwarg(shared.vae.dtype),
        **skip,
    )
    return {name: getattr(source, name) for name in names}


def _settings_table(model: SD3Model, info: ExportInfo) -> str:
    times = list(info.student_timesteps)
    target_options = ", ".join(f"{k} = {v!r}" for k, v in info.target_options.items())
    guidance = info.teacher_guidance_scale
    t5 = (
        "not used (trained with zeros in its slot): load with `text_encoder_3=None, "
        "tokenizer_3=None`"
        if not model.shared.uses_t5
        else "used"
    )
    rows = [
        ("sampling steps", str(len(times))),
        ("timesteps (flow time, = sigmas)", f"`{times}`"),
        ("guidance scale when sampling", "1.0 (no CFG: the teacher's guidance is distilled in)"),
        ("teacher guidance scale in training", "?" if guidance is None else f"{guidance:g}"),
        ("T5 text encoder", t5),
        ("max_sequence_length (T5 tokens)", str(model.max_sequence_length)),
        ("resolution", f"{model.resolution} x {model.resolution}"),
        ("dtype", _dtype_name(info.dtype)),
        ("target", f"`{info.target}` ({target_options or 'defaults'})"),
        ("student updates", str(info.step)),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _sampler_text(format: str) -> str:
    where = "The scheduler in `scheduler/`" if format == "lora" else "The pipeline's scheduler"
    return (
        f"{where} is `FlowMatchEulerDiscreteScheduler` with `shift = 1.0` and "
        "`stochastic_sampling = true`: each step predicts x0 and re-noises it with fresh noise "
        "to the next time, as the student was trained (DMD2's multi-step sampler). diffusers "
        "has no scheduler setting for a fixed list of sigmas, so pass the student's times with "
        "every call as `sigmas=`; with `shift = 1.0` they are used as given.\n\n"
        "The snippet draws the image `gdmd sample --seed 0` writes for its prompt. The "
        "starting latents come from a CPU generator in both. diffusers' scheduler draws the "
        "re-noising noise from torch's global generator on the pipeline's device, so the "
        "snippet seeds that: on the CPU the image is `gdmd sample`'s; on a GPU the re-noising "
        "noise comes from the CUDA generator, so from the second step on the image differs "
        "from `gdmd sample`'s (the same sampler with other noise; a 1-step student matches "
        "anywhere)."
    )


def model_card(model: SD3Model, format: str, info: ExportInfo) -> str:
    """The ``README.md`` of an export: what the student is, every setting its sampler needs,
    a diffusers snippet that draws ``gdmd sample``'s image, and the run's resolved recipe."""
    base = model.shared.pipeline.model
    teacher = getattr(info.teacher_settings, "model", None) or base
    reward_lines = [
        f"- `{label}`: `{spec.get('kind')}`, weight {spec.get('weight', 1.0)}, "
        f"normalise `{spec.get('normalise', 'none')}`"
        for label, spec in info.rewards.items()
    ] or ["- none"]
    recipe = (
        f"The run's resolved recipe (every default filled in):\n\n```toml\n"
        f"{info.recipe_text.rstrip()}\n```\n"
        if info.recipe_text
        else ""
    )
    return f"""---
base_model: {base}
library_name: diffusers
pipeline_tag: text-to-image
tags:
- stable-diffusion-3
- distillation
- gdmd
---

# {info.run_name}: a {len(info.student_timesteps)}-step student

{_what(model, format)}, distilled from the teacher `{teacher}` by gdmd.

{_settings_table(model, info)}

Rewards:

{chr(10).join(reward_lines)}

## Sampling

{_sampler_text(format)}

```python
{load_code(model, format, info)}
```

## Recipe

{recipe}"""
