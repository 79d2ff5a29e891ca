"""Running a recipe: from a validated recipe to a finished run directory, or a dry run.

What ``gdmd run`` calls. Results come back as data; anything shown while it runs goes
through a :class:`gdmd.progress.Display` the caller supplies (the CLI draws on a console),
so this module has no screen code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from gdmd.errors import GdmdError
from gdmd.interfaces import DiffusionModel
from gdmd.progress import Display
from gdmd.run.build import build_components, loop_settings, make_accelerator
from gdmd.run.rundir import RunDir
from gdmd.train.config import LoopSettings
from gdmd.train.distributed import broadcast_from_main, check_backend, check_launch, is_fsdp2
from gdmd.train.loop import train
from gdmd.train.randomness import derive_seed
from gdmd.train.state import Components, LoopResult


def describe_metrics(metrics: dict[str, float]) -> str:
    """A step's metrics in one short line: losses, seconds per step, mean rewards."""
    keys = [("student/loss", "student"), ("critic/loss", "critic"), ("step_time", "s/step")]
    parts = [f"{label} {metrics[k]:.4g}" for k, label in keys if k in metrics]
    rewards = [f"{k[7:]} {v:.3f}" for k, v in metrics.items() if k.startswith("reward/")]
    return "  ".join(parts + rewards)


def _sample_writer(
    recipe: Any,
    parts: Components,
    settings: LoopSettings,
    run_dir: Path,
    accelerator: Accelerator,
) -> Callable[[int, DiffusionModel], None]:
    """Sample grids, split over the processes and gathered; the main process writes them.

    Each prompt's starting noise comes from its own seed, so the grid does not depend on how
    many processes drew it (the re-noising between student steps does).
    """
    from accelerate.utils import gather

    from gdmd.images import save_grid
    from gdmd.sampling import consistency_sample

    count = settings.train.num_sample_prompts
    prompts = parts.prompts.evaluation_prompts() or parts.prompts.sample(
        count, torch.Generator().manual_seed(settings.seed)
    )
    # Spread over the list (evaluation prompts come grouped by category).
    prompts = prompts[:: max(1, len(prompts) // count)][:count]
    # Every process samples the same number of prompts (the last repeated as padding): under
    # FSDP2 each forward is a collective.
    per_process = -(-len(prompts) // accelerator.num_processes)
    padded = prompts + prompts[-1:] * (per_process * accelerator.num_processes - len(prompts))
    first = accelerator.process_index * per_process
    mine = list(range(first, first + per_process))
    device = accelerator.device

    def write(step: int, model: DiffusionModel) -> None:
        seed = settings.seed
        noise = torch.stack(
            [
                torch.randn(
                    model.sample_shape,
                    generator=torch.Generator().manual_seed(derive_seed(seed, "sample", i)),
                )
                for i in mine
            ]
        ).to(device)
        renoise = torch.Generator().manual_seed(
            derive_seed(seed, "sample-renoise", accelerator.process_index)
        )
        with torch.no_grad():
            chunk = [padded[i] for i in mine]
            cond = {k: v.to(device) for k, v in model.encode_prompts(chunk).items()}
            x0 = consistency_sample(model, cond, noise, settings.student_timesteps, renoise)
            images = gather(parts.teacher.decoder.decode(x0).contiguous())[: len(prompts)]
        if accelerator.is_main_process:
            upscale = max(1, 128 // images.shape[-1])
            save_grid(
                images.cpu(), run_dir / "samples" / f"step-{step:07d}.png", prompts, upscale=upscale
            )

    return write


def _flat_hparams(recipe: Any) -> dict[str, Any]:
    tr = recipe.train
    return {
        "target": recipe.target.kind,
        "steps": tr.steps,
        "batch_size": tr.batch_size,
        "critic_steps": tr.critic_steps,
        "student_lr": tr.student_lr,
        "critic_lr": tr.critic_lr,
        "guidance_scale": recipe.teacher.guidance_scale,
        "seed": recipe.run.seed,
    }


def _decide_start(recipe: Any, pm: Any, run: RunDir, resume: str | None) -> tuple[Any, list[str]]:
    """On the main process: the checkpoint to resume (checked against the recipe) or None,
    and warnings about the plugins that changed since the run was written."""
    resume_from = run.resolve_resume(resume)
    if resume_from is None:
        return None, []
    run.check_resume(recipe, resume_from, pm)
    return resume_from, run.plugin_changes(pm)


def run_recipe(
    recipe: Any, pm: Any, *, resume: str | None = None, display: Display | None = None
) -> Path:
    """Run a recipe to the end (or resume it) and return its run directory.

    Under a launcher (``torchrun``, ``accelerate launch``, ``gdmd run --num-processes``) every
    process calls this; the main process decides whether and from where to resume, checks
    the recipe against the run's, and is the only one that writes.
    """
    display = display or Display()
    run = RunDir.for_recipe(recipe)
    run_dir = run.path
    # 1. Processes and back end first, so a broken launch never touches the run directory.
    accelerator = make_accelerator(recipe, run_dir)
    check_launch(accelerator)
    check_backend(accelerator)
    main = accelerator.is_main_process
    decision: tuple[str, Any] = ("fresh", (None, []))
    if main:
        try:
            decision = ("resume", _decide_start(recipe, pm, run, resume))
        except GdmdError as exc:
            decision = ("error", exc)
    kind, value = broadcast_from_main(accelerator, decision)
    if kind == "error":
        raise value
    resume_from, plugin_changes = value
    # 2. Only now is the run directory written.
    if main:
        run.start(recipe, pm)
    accelerator.wait_for_everyone()
    if main:
        if resume_from is not None:
            display.note(f"resuming from {resume_from}")
            for change in plugin_changes:
                display.note(f"warning: plugin version changed since the run began: {change}")
        elif resume == "auto":
            display.note("no checkpoint to resume from: starting a fresh run")

    # 3. Build, then train.
    with display.status("building teacher, student, critic and rewards..."):
        parts = build_components(recipe, accelerator)
    settings = loop_settings(recipe, parts.teacher.schedule)
    if any(t != "jsonl" for t in recipe.log.trackers):
        accelerator.init_trackers("gdmd", config=_flat_hparams(recipe))
    sample_every = settings.train.sample_every
    on_sample = (
        _sample_writer(recipe, parts, settings, run_dir, accelerator) if sample_every else None
    )
    result = _train(parts, settings, accelerator, run_dir, resume_from, display, on_sample)
    accelerator.wait_for_everyone()

    # 4. The trained student and run.json, from the main process.
    if main:
        if is_fsdp2(accelerator):
            display.note(
                "FSDP2: the trained student tensors are in the last checkpoint "
                f"({run.latest_checkpoint()}); no student/ export is written"
            )
        else:
            run.save_student(accelerator.unwrap_model(parts.student))
        run.write_info(
            {
                "steps": result.step,
                "student_timesteps": settings.student_timesteps,
                "guidance_scale": settings.guidance_scale,
                "target": recipe.target.kind,
                "num_processes": accelerator.num_processes,
                "distributed_type": str(accelerator.distributed_type),
            }
        )
    if on_sample is not None and result.step % sample_every:
        on_sample(result.step, parts.student)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if main:
        display.note(f"done: {result.step} steps, run directory {run_dir}")
    return run_dir


def _train(
    parts: Components,
    settings: LoopSettings,
    accelerator: Accelerator,
    run_dir: Path,
    resume_from: Path | None,
    display: Display,
    on_sample: Callable[[int, DiffusionModel], None] | None,
) -> LoopResult:
    if not accelerator.is_main_process:
        return train(
            parts, settings, accelerator, run_dir, resume_from=resume_from, on_sample=on_sample
        )
    # Where the bar starts; the loop's first update corrects it if a folder was renamed.
    digits = resume_from.name.rsplit("-", 1)[-1] if resume_from is not None else "0"
    start = int(digits) if digits.isdigit() else 0
    with display.task("distilling", settings.train.steps, start) as update:
        return train(
            parts,
            settings,
            accelerator,
            run_dir,
            resume_from=resume_from,
            on_step=lambda step, metrics: update(step, describe_metrics(metrics)),
            on_sample=on_sample,
        )


@dataclass
class ComponentRow:
    """One built component of a dry run."""

    role: str
    kind: str
    plugin: str
    detail: str


@dataclass
class DryRun:
    """What a run would do: the built components and the loop's shape."""

    name: str
    components: list[ComponentRow]
    steps: int
    critic_steps: int
    samples_per_update: int
    student_timesteps: list[float]
    run_dir: Path
    parts: Components


def dry_run(recipe: Any, pm: Any, *, display: Display | None = None) -> DryRun:
    """Build every component and describe what a run would do, without training or writing."""
    display = display or Display()
    with display.status("building teacher, student, critic and rewards..."):
        parts = build_components(recipe, None)
    settings = loop_settings(recipe, parts.teacher.schedule)
    rows = []
    for role in ("teacher", "student", "critic"):
        spec = getattr(recipe, role)
        model = getattr(parts, role)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(ComponentRow(role, spec.kind, spec.component.plugin, f"{count:,}"))
    for label, spec in recipe.rewards.items():
        plugin = spec.component.plugin
        rows.append(ComponentRow(f"reward.{label}", spec.kind, plugin, f"weight {spec.weight}"))
    rows.append(ComponentRow("target", recipe.target.kind, recipe.target.component.plugin, ""))
    rows.append(ComponentRow("prompts", recipe.prompts.kind, recipe.prompts.component.plugin, ""))
    tr = settings.train
    return DryRun(
        name=recipe.run.name,
        components=rows,
        steps=tr.steps,
        critic_steps=tr.critic_steps,
        samples_per_update=tr.batch_size * (tr.critic_steps + 1)
        * settings.gradient_accumulation_steps,
        student_timesteps=settings.student_timesteps,
        run_dir=RunDir.for_recipe(recipe).path,
        parts=parts,
    )
