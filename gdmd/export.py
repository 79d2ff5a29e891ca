"""``gdmd export``: a run's SD3 student as files that diffusers loads without gdmd.

Two formats:

* ``lora``: diffusers' LoRA file (``pytorch_lora_weights.safetensors``, keys
  ``transformer.<peft key>``, the ``LoraConfig`` in the safetensors metadata so an alpha that
  is not the rank survives), plus the student's scheduler config in ``scheduler/``.
  ``StableDiffusion3Pipeline.from_pretrained(base).load_lora_weights(OUT)`` gives the student.
* ``merged``: a complete ``StableDiffusion3Pipeline`` directory with the LoRA merged into the
  transformer weights (or the fully fine-tuned transformer), its scheduler set up for the
  student's few-step sampler (see :func:`gdmd.models.sd3.export_pipeline`).

Both write a model card ``README.md``: steps and timesteps, guidance, teacher, target,
rewards, how to load and sample, and the run's resolved recipe. The export is written to a
temporary sibling folder and renamed into place, so a failed export leaves no ``OUT``.

This module imports no torch; the command's work is imported when it runs.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from gdmd.errors import GdmdError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from gdmd.models.sd3 import SD3Model

__all__ = ["ExportError", "ExportedRun", "add_export_command", "export_run"]

Format = Literal["lora", "merged"]
FORMATS: tuple[Format, ...] = ("lora", "merged")


class ExportError(GdmdError):
    """A run cannot be exported as asked (no run, not an SD3 student, ``OUT`` exists...)."""

    exit_code = 2


@dataclass
class ExportedRun:
    """What was written, for the command's message and for tests."""

    out: Path
    format: Format
    base: str
    timesteps: list[float]


@dataclass
class _Run:
    run_dir: Path
    recipe: dict[str, Any]
    recipe_text: str
    info: dict[str, Any]
    student_dir: Path


def _read_run(run_dir: Path) -> _Run:
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    resolved = run_dir / "resolved.toml"
    if not resolved.is_file():
        raise ExportError(f"{run_dir} is not a run directory: it has no resolved.toml")
    text = resolved.read_text()
    try:
        recipe = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ExportError(f"cannot read {resolved}: {err}") from err
    teacher_kind = recipe.get("teacher", {}).get("kind")
    student_kind = recipe.get("student", {}).get("kind", teacher_kind)
    if student_kind != "sd3":
        raise ExportError(
            f"the student of {run_dir} is a {student_kind!r} model; gdmd export writes "
            "diffusers Stable Diffusion 3 files, so it exports only sd3 students"
        )
    student_dir = run_dir / "student"
    if not (student_dir / "gdmd_sd3.json").is_file():
        raise ExportError(
            f"{run_dir} has no finished student ({student_dir}/gdmd_sd3.json is missing): the "
            "run did not finish; continue it with `gdmd run RECIPE --resume auto`"
        )
    run_json = run_dir / "run.json"
    info = json.loads(run_json.read_text()) if run_json.is_file() else {}
    return _Run(run_dir, recipe, text, info, student_dir)


def _load_student(run: _Run) -> SD3Model:
    import torch

    from gdmd.interfaces import BuildContext
    from gdmd.models.sd3 import SD3Config, build_sd3

    student = run.recipe.get("student", {})
    teacher = run.recipe.get("teacher", {})
    # The run's dtype, so a merged export is as large on disk as the model it trained.
    config = SD3Config(
        model=str(run.student_dir),
        dtype=student.get("dtype") or teacher.get("dtype"),
        drop_t5=bool(teacher.get("drop_t5", False)),
        max_sequence_length=int(student.get("max_sequence_length", 256)),
    )
    ctx = BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
        components={"role": "student"},
    )
    return build_sd3(config, ctx)


def _timesteps(run: _Run) -> list[float]:
    times = run.info.get("student_timesteps") or run.recipe.get("student", {}).get("timesteps")
    if not times:
        raise ExportError(
            f"{run.run_dir} records no student timesteps (run.json or [student] timesteps)"
        )
    return [float(t) for t in times]


def export_run(run_dir: str | Path, out: str | Path, format: Format = "lora") -> ExportedRun:
    """Export the SD3 student of ``run_dir`` to ``out`` (which must not exist)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists; choose a new folder or remove it first")
    run = _read_run(run_dir)
    timesteps = _timesteps(run)
    student = _load_student(run)
    base = student.shared.pipeline.model
    if format == "lora":
        _check_lora_exportable(student, run_dir)

    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        if format == "lora":
            _write_lora(student, tmp, timesteps)
        else:
            from gdmd.models.sd3 import export_pipeline

            export_pipeline(student, tmp, student_timesteps=timesteps)
        (tmp / "README.md").write_text(model_card(run, student, format, timesteps))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportedRun(out=out, format=format, base=base, timesteps=timesteps)


def _check_lora_exportable(student: SD3Model, run_dir: Path) -> None:
    if student.lora is None:
        raise ExportError(
            f"the student of {run_dir} is fully fine-tuned, not a LoRA: export it with "
            "--format merged"
        )
    pipeline = student.shared.pipeline
    if student.base is None or (student.base.model, student.base.subfolder) != (
        pipeline.model,
        "transformer",
    ):
        raise ExportError(
            f"the student's LoRA of {run_dir} sits on a transformer that is not the pipeline's "
            f"own ({pipeline.model}), so load_lora_weights on that pipeline would not give the "
            "student: export it with --format merged"
        )


def _write_lora(student: SD3Model, directory: Path, timesteps: list[float]) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from gdmd.models.sd3 import save_lora_file, student_scheduler_config

    directory.mkdir(parents=True)
    save_lora_file(student, directory)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        student_scheduler_config(student.shared.scheduler_config)
    )
    scheduler.save_pretrained(directory / "scheduler")
    notes = {
        "format": "gdmd-sd3-lora-export",
        "base": student.shared.pipeline.model,
        "revision": student.shared.pipeline.revision,
        "timesteps": timesteps,
        "guidance_scale": 1.0,
        "without_t5": student.shared.text_encoder_3 is None,
    }
    (directory / "gdmd_export.json").write_text(json.dumps(notes, indent=2) + "\n")


def _load_code(format: Format, base: str, out: str, timesteps: list[float], no_t5: bool) -> str:
    t5 = ", text_encoder_3=None, tokenizer_3=None" if no_t5 else ""
    lines = [
        "import torch",
        "from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline",
        "",
    ]
    if format == "lora":
        lines += [
            f'pipe = StableDiffusion3Pipeline.from_pretrained("{base}", '
            f"torch_dtype=torch.bfloat16{t5})",
            f'pipe.load_lora_weights("{out}")',
            "# The student's sampler: predict x0, re-noise it with fresh noise (stochastic),",
            "# at exactly the times it was trained at (shift 1).",
            "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(",
            f'    "{out}", subfolder="scheduler"',
            ")",
        ]
    else:
        lines += [
            f'pipe = StableDiffusion3Pipeline.from_pretrained("{out}", '
            f"torch_dtype=torch.bfloat16{t5})",
        ]
    lines += [
        'pipe.to("cuda")',
        "image = pipe(",
        '    "a photo of a red fox in the snow",',
        f"    sigmas={timesteps},",
        "    guidance_scale=1.0,",
        ").images[0]",
    ]
    return "\n".join(lines)


def model_card(run: _Run, student: SD3Model, format: Format, timesteps: list[float]) -> str:
    """The ``README.md`` of an export: what the student is, how to load it, the recipe."""
    recipe = run.recipe
    teacher = recipe.get("teacher", {})
    target = recipe.get("target", {})
    rewards = recipe.get("reward", {})
    base = student.shared.pipeline.model
    lora = student.lora
    reward_lines = [
        f"- `{label}`: `{spec.get('kind')}`, weight {spec.get('weight', 1.0)}, "
        f"normalise `{spec.get('normalise', 'none')}`"
        for label, spec in rewards.items()
    ] or ["- none"]
    target_options = ", ".join(f"{k} = {v!r}" for k, v in target.items() if k != "kind")
    what = (
        f"a LoRA (rank {lora.rank}, alpha {lora.alpha:g}, scale {lora.scale:g}) on `{base}`"
        if lora is not None and format == "lora"
        else "a complete diffusers pipeline"
        + (
            f" (LoRA rank {lora.rank}, alpha {lora.alpha:g}, merged into the weights)"
            if lora is not None
            else " (fully fine-tuned transformer)"
        )
    )
    no_t5 = student.shared.text_encoder_3 is None
    out = "PATH/TO/THIS/FOLDER"
    sampler = (
        "The scheduler in `scheduler/` is the base pipeline's `FlowMatchEulerDiscreteScheduler` "
        "with `shift = 1.0` and `stochastic_sampling = true`."
        if format == "lora"
        else "The pipeline's scheduler is `FlowMatchEulerDiscreteScheduler` with `shift = 1.0` "
        "and `stochastic_sampling = true`."
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

# {recipe.get("run", {}).get("name", run.run_dir.name)}: a {len(timesteps)}-step student

{what}, distilled from the teacher `{teacher.get("model", base)}` by gdmd
(`{target.get("kind", "?")}` target) in {run.info.get("steps", "?")} student updates.

| | |
|---|---|
| sampling steps | {len(timesteps)} |
| timesteps (flow time, = sigmas) | `{timesteps}` |
| guidance scale when sampling | 1.0 (no CFG: the teacher's guidance is distilled in) |
| teacher guidance scale in training | {teacher.get("guidance_scale", "?")} |
| resolution | {student.resolution} |
| target | `{target.get("kind", "?")}` ({target_options or "defaults"}) |
| T5 text encoder | {"not used (trained with zeros in its slot)" if no_t5 else "used"} |

Rewards:

{chr(10).join(reward_lines)}

## Sampling

{sampler} diffusers has no scheduler setting for a fixed list of sigmas, so pass the
student's times with every call as `sigmas=`; with `shift = 1.0` they are used as given. Each
step predicts x0 and re-noises it with fresh noise to the next time, as the student was
trained (DMD2's multi-step sampler).

```python
{_load_code(format, base, out, timesteps, no_t5)}
```

## Recipe

The run's resolved recipe (every default filled in):

```toml
{run.recipe_text.rstrip()}
```
"""


def add_export_command(app: typer.Typer) -> None:
    """Register ``gdmd export`` on ``app``."""

    @app.command("export")
    def export(
        run_dir: Annotated[str, typer.Argument(help="A run directory written by gdmd run.")],
        out: Annotated[str, typer.Argument(help="The folder to write (must not exist).")],
        format: Annotated[
            str,
            typer.Option(
                "--format",
                help="lora: diffusers LoRA file for load_lora_weights on the base pipeline; "
                "merged: a complete diffusers pipeline with the LoRA merged in.",
            ),
        ] = "lora",
    ) -> None:
        """Export a run's SD3 student for diffusers, with a model card (README.md)."""
        from rich.console import Console

        if format not in FORMATS:
            raise ExportError(f"unknown --format {format!r}; use one of {', '.join(FORMATS)}")
        result = export_run(run_dir, out, format)  # type: ignore[arg-type]
        Console(highlight=False, soft_wrap=True).print(
            f"[green]wrote[/] {result.out} ({result.format}; base {result.base}; "
            f"{len(result.timesteps)} steps, sigmas {result.timesteps})"
        )
