"""From a validated recipe to a finished run directory: build, train, save, report.

The CLI's ``gdmd run`` calls :func:`run_recipe` (or :func:`dry_run`). This module is the only
place that reads the whole recipe; each component receives its own validated config and a
:class:`~gdmd.interfaces.BuildContext`.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gdmd.errors import CheckpointError, GdmdError, RecipeError
from gdmd.interfaces import BuildContext, DiffusionModel, WeightedReward
from gdmd.schedules import RenoiseSampler
from gdmd.train.checkpoint import COMPLETE, complete_checkpoints, latest_checkpoint
from gdmd.train.distributed import (
    broadcast_from_main,
    check_backend,
    check_launch,
    is_fsdp2,
    wants_cpu,
)
from gdmd.train.loop import Components, LoopResult, LoopSettings, train
from gdmd.train.randomness import derive_seed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ComponentBuildError(GdmdError):
    """A component's factory failed; the message names the recipe table and plugin."""

    exit_code = 2


def run_dir_of(recipe: Any) -> Path:
    return Path(recipe.run.output_dir) / recipe.run.name


def _build(table: str, spec: Any, ctx: BuildContext) -> Any:
    component = spec.component
    ctx.plugin = component.plugin
    try:
        return spec.build(ctx)
    except GdmdError:
        raise
    except Exception as exc:
        raise ComponentBuildError(
            f"[{table}] kind {spec.kind!r} (plugin {component.plugin!r}) failed to build: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def build_components(recipe: Any, accelerator: Accelerator | None = None) -> Components:
    """Build teacher, student, critic, rewards, target strategy and prompt source.

    The student and critic are built from the teacher (``init_from = "teacher"``): their
    factory receives it as ``ctx.components["init_from"]``.
    """
    device = accelerator.device if accelerator is not None else torch.device("cpu")

    def context(**components: Any) -> BuildContext:
        # Each component gets its own generator, seeded from the run seed and its role, so
        # adding a reward does not change how the student is initialised.
        role = str(components.get("role", ""))
        seed = (recipe.run.seed * 1_000_003 + sum(map(ord, role))) % (2**63)
        return BuildContext(
            device=device,
            dtype=torch.float32,
            generator=torch.Generator().manual_seed(seed),
            run_dir=run_dir_of(recipe),
            accelerator=accelerator,
            components=components,
        )

    teacher: DiffusionModel = _build("teacher", recipe.teacher, context(role="teacher"))
    teacher.requires_grad_(False)  # type: ignore[attr-defined]
    teacher.eval()  # type: ignore[attr-defined]

    def from_teacher(role: str) -> DiffusionModel:
        spec = getattr(recipe, role)
        extra: dict[str, Any] = {"role": role}
        if spec.init_from == "teacher":
            extra["init_from"] = teacher
        return _build(role, spec, context(**extra))

    student = from_teacher("student")
    critic = from_teacher("critic")
    rewards = [
        WeightedReward(
            label=label,
            model=_build(f"reward.{label}", spec, context(role=f"reward.{label}")),
            weight=spec.weight,
            normalise=spec.normalise,
            plugin=spec.component.plugin,
        )
        for label, spec in recipe.rewards.items()
    ]
    target = _build("target", recipe.target, context(role="target"))
    prompts = _build("prompts", recipe.prompts, context(role="prompts"))
    problems = []
    if getattr(target, "needs_differentiable_reward", False):
        for reward in rewards:
            if not getattr(reward.model, "differentiable", False):
                problems.append(
                    f"{recipe.source or 'recipe'}: [reward.{reward.label}] kind: target "
                    f"{recipe.target.kind!r} back-propagates through its rewards, but reward "
                    f"{recipe.rewards[reward.label].kind!r} is not differentiable"
                )
    if getattr(target, "needs_rewards", False) and not rewards:
        problems.append(
            f"{recipe.source or 'recipe'}: [target] kind: {recipe.target.kind!r} needs at least "
            "one [reward.<label>] table"
        )
    if problems:
        raise RecipeError(problems)
    return Components(
        teacher=teacher,
        student=student,
        critic=critic,
        rewards=rewards,
        target=target,
        prompts=prompts,
    )


def student_timesteps(recipe: Any, schedule: Any) -> list[float]:
    """The student's fixed times: the recipe's, or ``steps`` evenly spaced ones placed by the
    schedule (SD3's timestep shift, for instance)."""
    from gdmd.sampling import default_timesteps

    if recipe.student.timesteps is not None:
        return [float(t) for t in recipe.student.timesteps]
    return [float(t) for t in default_timesteps(recipe.student.steps, schedule).tolist()]


def loop_settings(recipe: Any, schedule: Any) -> LoopSettings:
    tr = recipe.train
    timesteps = student_timesteps(recipe, schedule)
    return LoopSettings(
        steps=tr.steps,
        batch_size=tr.batch_size,
        critic_steps=tr.critic_steps,
        student_lr=tr.student_lr,
        critic_lr=tr.critic_lr,
        weight_decay=tr.weight_decay,
        adam_betas=tuple(tr.adam_betas),  # type: ignore[arg-type]
        warmup_steps=tr.warmup_steps,
        grad_clip=tr.grad_clip,
        renoise=RenoiseSampler(
            tr.renoise_range[0],
            tr.renoise_range[1],
            beta=tuple(tr.renoise_beta) if tr.renoise_beta else None,  # type: ignore[arg-type]
            anneal_steps=tr.renoise_anneal_steps,
        ),
        backward_simulation=tr.backward_simulation,
        ema_decay=tr.ema_decay,
        checkpoint_every=tr.checkpoint_every,
        keep_checkpoints=tr.keep_checkpoints,
        sample_every=tr.sample_every,
        sample_prompts=[],
        log_every=recipe.log.every,
        guidance_scale=recipe.teacher.guidance_scale,
        student_timesteps=timesteps,
        gradient_accumulation_steps=recipe.accelerate.gradient_accumulation_steps,
        seed=recipe.run.seed,
    )


def make_accelerator(recipe: Any, run_dir: Path | None) -> Accelerator:
    trackers = [t for t in recipe.log.trackers if t != "jsonl"] if run_dir is not None else []
    return Accelerator(
        mixed_precision=recipe.accelerate.mixed_precision,
        cpu=wants_cpu(recipe.accelerate.cpu),
        log_with=trackers or None,
        project_dir=str(run_dir) if run_dir is not None else None,
    )


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to continue from, or ``None`` for a fresh run.

    ``"auto"``: the newest whole checkpoint of this run, if any. A path: a checkpoint folder,
    or a run folder whose newest checkpoint is taken. Without ``resume``, a run folder that
    already holds checkpoints is refused rather than overwritten.
    """
    root = run_dir / "checkpoints"
    if resume is None:
        if complete_checkpoints(root):
            raise CheckpointError(
                f"{run_dir} already holds checkpoints; pass --resume auto to continue it, or "
                "set another [run] name or output_dir"
            )
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume)
    if (path / COMPLETE).is_file():
        return path
    found = latest_checkpoint(path / "checkpoints") if path.is_dir() else None
    if found is None:
        raise CheckpointError(f"--resume {resume}: no complete checkpoint found there")
    return found


#: Recipe keys a resume may change: they extend the run or change what is observed of it,
#: never what the steps already taken computed (warm-up and annealing count from step 0).
RESUMABLE_KEYS = frozenset(
    {
        "run.output_dir",
        "train.steps",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.sample_every",
        "train.num_sample_prompts",
        "log.every",
        "log.trackers",
    }
)


def _flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def recipe_differences(saved_toml: str, current_toml: str) -> list[str]:
    """Dotted keys whose values differ between two resolved recipes, sorted."""
    saved = _flatten(tomllib.loads(saved_toml))
    current = _flatten(tomllib.loads(current_toml))
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))


def check_resume_recipe(recipe: Any, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` with a recipe that differs from the one that wrote it
    (in anything but :data:`RESUMABLE_KEYS`), naming the keys that differ."""
    run_dir = checkpoint.parent.parent
    resolved = run_dir / "resolved.toml"
    if not resolved.is_file():
        raise CheckpointError(
            f"{run_dir} has no resolved.toml, so the recipe that wrote {checkpoint.name} is "
            "unknown; refusing to resume it"
        )
    differing = [
        k
        for k in recipe_differences(resolved.read_text(), recipe.to_toml())
        if k not in RESUMABLE_KEYS
    ]
    if not differing:
        return
    saved = _flatten(tomllib.loads(resolved.read_text()))
    current = _flatten(tomllib.loads(recipe.to_toml()))

    def show(table: dict[str, Any], key: str) -> str:
        return repr(table[key]) if key in table else "(absent)"

    lines = [f"{k}: run has {show(saved, k)}, now {show(current, k)}" for k in differing]
    raise CheckpointError(
        f"refusing to resume {run_dir}: the recipe differs from its resolved.toml in "
        f"{len(differing)} key(s) (only {', '.join(sorted(RESUMABLE_KEYS))} may change on "
        "resume):\n  " + "\n  ".join(lines)
    )


def _decide_resume(recipe: Any, run_dir: Path, resume: str | None) -> Path | None:
    """On the main process: the checkpoint to resume (checked against the recipe), or None."""
    resume_from = resolve_resume(run_dir, resume)
    if resume_from is not None:
        check_resume_recipe(recipe, resume_from)
    return resume_from


def plugins_lock(pm: Any) -> str:
    """``distribution==version  # plugins`` per distribution, then plugins registered in code."""
    by_dist: dict[tuple[str, str], list[str]] = {}
    in_code: list[str] = []
    for plugin, dist, version in pm.plugin_versions():
        if dist is None:
            in_code.append(plugin)
        else:
            by_dist.setdefault((dist, version or "unknown"), []).append(plugin)
    lines = [f"{d}=={v}  # {', '.join(plugins)}" for (d, v), plugins in sorted(by_dist.items())]
    lines += [f"# registered in code (no distribution): {p}" for p in in_code]
    return "\n".join(lines) + "\n"


def _describe(metrics: dict[str, float]) -> str:
    keys = [
        ("student/loss", "student"),
        ("critic/loss", "critic"),
        ("step_time", "s/step"),
    ]
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

    prompts = parts.prompts.evaluation_prompts() or parts.prompts.sample(
        recipe.train.num_sample_prompts, torch.Generator().manual_seed(recipe.run.seed)
    )
    # Spread over the list (evaluation prompts come grouped by category).
    count = recipe.train.num_sample_prompts
    prompts = prompts[:: max(1, len(prompts) // count)][:count]
    # Every process samples the same number of prompts (the last repeated as padding): under
    # FSDP2 each forward is a collective.
    per_process = -(-len(prompts) // accelerator.num_processes)
    padded = prompts + prompts[-1:] * (per_process * accelerator.num_processes - len(prompts))
    first = accelerator.process_index * per_process
    mine = list(range(first, first + per_process))
    device = accelerator.device

    def write(step: int, model: DiffusionModel) -> None:
        seed = recipe.run.seed
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


def run_recipe(
    recipe: Any, pm: Any, *, resume: str | None = None, console: Console | None = None
) -> Path:
    """Run a recipe to the end (or resume it) and return its run directory.

    Under a launcher (``torchrun``, ``accelerate launch``, ``gdmd run --num-processes``) every
    process calls this; the main process decides whether and from where to resume, checks
    the recipe against the run's, and is the only one that writes.
    """
    console = console or Console()
    run_dir = run_dir_of(recipe)
    # 1. Processes and back end first, so a broken launch never touches the run directory.
    accelerator = make_accelerator(recipe, run_dir)
    check_launch(accelerator)
    check_backend(accelerator)
    main = accelerator.is_main_process
    decision: tuple[str, Any] = ("fresh", None)
    if main:
        try:
            decision = ("resume", _decide_resume(recipe, run_dir, resume))
        except GdmdError as exc:
            decision = ("error", exc)
    kind, value = broadcast_from_main(accelerator, decision)
    if kind == "error":
        raise value
    resume_from: Path | None = value
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "resolved.toml").write_text(recipe.to_toml())
        (run_dir / "plugins.lock").write_text(plugins_lock(pm))
    accelerator.wait_for_everyone()
    if resume_from is not None:
        console.print(f"[bold]resuming[/] from {resume_from}")
    elif resume == "auto":
        console.print("no checkpoint to resume from: starting a fresh run")

    with console.status("building teacher, student, critic and rewards...", spinner="dots"):
        parts = build_components(recipe, accelerator)
    settings = loop_settings(recipe, parts.teacher.schedule)
    if recipe.log.trackers and any(t != "jsonl" for t in recipe.log.trackers):
        accelerator.init_trackers("gdmd", config=_flat_hparams(recipe))
    on_sample = (
        _sample_writer(recipe, parts, settings, run_dir, accelerator)
        if settings.sample_every
        else None
    )
    result = _train_with_progress(
        parts, settings, accelerator, run_dir, resume_from, console, on_sample
    )
    accelerator.wait_for_everyone()
    fsdp2 = is_fsdp2(accelerator)
    if main:
        if fsdp2:
            console.print(
                "FSDP2: the trained student tensors are in the last checkpoint "
                f"({latest_checkpoint(run_dir / 'checkpoints')}); no student/ export is written"
            )
        else:
            final = run_dir / "student"
            tmp = run_dir / ".student-tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            accelerator.unwrap_model(parts.student).save_pretrained(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        (run_dir / "run.json").write_text(
            json.dumps(
                {
                    "steps": result.step,
                    "student_timesteps": settings.student_timesteps,
                    "guidance_scale": settings.guidance_scale,
                    "target": recipe.target.kind,
                    "num_processes": accelerator.num_processes,
                    "distributed_type": str(accelerator.distributed_type),
                },
                indent=1,
            )
        )
    if settings.sample_every and on_sample is not None and result.step % settings.sample_every:
        on_sample(result.step, parts.student)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if main:
        console.print(f"[green]done[/]: {result.step} steps, run directory {run_dir}")
    return run_dir


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


def _train_with_progress(
    parts: Components,
    settings: LoopSettings,
    accelerator: Accelerator,
    run_dir: Path,
    resume_from: Path | None,
    console: Console,
    on_sample: Callable[[int, DiffusionModel], None] | None,
) -> LoopResult:
    if not accelerator.is_main_process:
        return train(
            parts, settings, accelerator, run_dir, resume_from=resume_from, on_sample=on_sample
        )
    if console.is_terminal:
        progress = Progress(
            TextColumn("[bold]distilling"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        with progress:
            task = progress.add_task("train", total=settings.steps, info="")

            def on_step(step: int, metrics: dict[str, float]) -> None:
                progress.update(task, completed=step, info=_describe(metrics))

            return train(
                parts,
                settings,
                accelerator,
                run_dir,
                resume_from=resume_from,
                on_step=on_step,
                on_sample=on_sample,
            )
    every = max(1, settings.steps // 10)

    def log_line(step: int, metrics: dict[str, float]) -> None:
        if step % every == 0 or step == settings.steps:
            console.print(f"step {step}/{settings.steps}  {_describe(metrics)}", highlight=False)

    return train(
        parts,
        settings,
        accelerator,
        run_dir,
        resume_from=resume_from,
        on_step=log_line,
        on_sample=on_sample,
    )


def dry_run(recipe: Any, pm: Any, *, console: Console | None = None) -> Components:
    """Build every component and print what a run would do, without training or writing."""
    console = console or Console()
    parts = build_components(recipe, None)
    settings = loop_settings(recipe, parts.teacher.schedule)
    table = Table(title=f"dry run: {recipe.run.name}")
    table.add_column("role")
    table.add_column("kind")
    table.add_column("plugin")
    table.add_column("trainable parameters", justify="right")
    for role in ("teacher", "student", "critic"):
        spec = getattr(recipe, role)
        model = getattr(parts, role)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        table.add_row(role, spec.kind, spec.component.plugin, f"{count:,}")
    for label, spec in recipe.rewards.items():
        table.add_row(f"reward.{label}", spec.kind, spec.component.plugin, f"weight {spec.weight}")
    table.add_row("target", recipe.target.kind, recipe.target.component.plugin, "")
    table.add_row("prompts", recipe.prompts.kind, recipe.prompts.component.plugin, "")
    console.print(table)
    per_update = settings.batch_size * (settings.critic_steps + 1)
    per_update *= settings.gradient_accumulation_steps
    console.print(
        f"{settings.steps} student updates x {settings.critic_steps} critic updates; "
        f"{per_update} student samples per update; student timesteps "
        f"{[round(t, 4) for t in settings.student_timesteps]}; run directory {run_dir_of(recipe)}"
    )
    return parts
