"""Exporting an SD3 model as files diffusers loads without gdmd."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gdmd.models.sd3.adapters import _plain_copy
from gdmd.models.sd3.common import EXPORT_METADATA, SD3ConfigError
from gdmd.models.sd3.model import SD3Model


def export_pipeline(
    model: SD3Model,
    directory: str | Path,
    *,
    student_timesteps: Sequence[float] | None = None,
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
    pipe: Any = StableDiffusion3Pipeline(
        transformer=_plain_copy(model, merge=True),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
        vae=shared.vae,
        text_encoder=shared.text_encoder,
        tokenizer=shared.tokenizer,
        text_encoder_2=shared.text_encoder_2,
        tokenizer_2=shared.tokenizer_2,
        text_encoder_3=shared.text_encoder_3,
        tokenizer_3=shared.tokenizer_3,
    )
    directory = Path(directory)
    pipe.save_pretrained(directory, safe_serialization=True)

    without_t5 = shared.text_encoder_3 is None
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
