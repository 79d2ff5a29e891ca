"""The distillation loop: one function, read top to bottom.

Each student update (DMD2's two-time-scale rule, Yin et al. 2024):

1. ``critic_steps`` critic updates: a fresh no-grad student sample by backward simulation,
   then the teacher's own denoising loss on it (the critic tracks the student's distribution).
   The critic's states after each update are kept when the target strategy asks for them
   (GDMD's ``vary = "fake"`` groups).
2. One student update: a student sample **with grad** at a random one of its timesteps
   (backward simulation), the target strategy turns it into targets and weights, and the
   student regresses onto them (plus the strategy's extra loss, for ``dmdr``).

The loop sees models, decoder and rewards only through :mod:`gdmd.interfaces`, so it knows
neither SD3 nor the toy domain. All randomness comes from one seeded generator that is part
of the checkpoint, so resuming is exact.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from accelerate import Accelerator

from gdmd.errors import NonFiniteError, RunInterrupted
from gdmd.interfaces import (
    Conditioning,
    DiffusionModel,
    PromptSource,
    TargetContext,
    TargetStrategy,
    WeightedReward,
)
from gdmd.losses import denoising_loss, group_target_loss
from gdmd.schedules import RenoiseSampler
from gdmd.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


@dataclass
class Components:
    """The built parts of a run, by role."""

    teacher: DiffusionModel
    student: DiffusionModel
    critic: DiffusionModel
    rewards: list[WeightedReward]
    target: TargetStrategy
    prompts: PromptSource


@dataclass
class LoopSettings:
    """The loop's knobs, assembled from the recipe's ``[train]``, ``[teacher]``, ``[student]``."""

    steps: int
    batch_size: int
    critic_steps: int
    student_lr: float
    critic_lr: float
    weight_decay: float
    adam_betas: tuple[float, float]
    warmup_steps: int
    grad_clip: float | None
    renoise: RenoiseSampler
    backward_simulation: bool
    ema_decay: float | None
    checkpoint_every: int
    keep_checkpoints: int
    sample_every: int
    sample_prompts: list[str]
    log_every: int
    guidance_scale: float
    student_timesteps: list[float]
    gradient_accumulation_steps: int = 1
    seed: int = 0


@dataclass
class LoopResult:
    step: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str | None = None


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop acts on it at the next step boundary.

    Saving inside a signal handler can deadlock (Lightning #21406); a flag cannot.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of the parameters being trained (frozen weights never go to disk)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _warmup(warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)

    return factor


def _check_finite(value: torch.Tensor, what: str, step: int) -> None:
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(
            f"{what} is not finite at step {step} ({value.detach().flatten()[:4].tolist()}); "
            "stopped before the optimizer step, the last checkpoint is intact"
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` so a resumed run does not log a step twice."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(f"{line}\n" for line in kept))


def train(
    parts: Components,
    settings: LoopSettings,
    accelerator: Accelerator,
    run_dir: Path,
    *,
    resume_from: Path | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_sample: Callable[[int, DiffusionModel], None] | None = None,
) -> LoopResult:
    """Distil ``parts.student`` from ``parts.teacher`` for ``settings.steps`` student updates.

    ``resume_from``: a checkpoint folder to continue from (exactly). ``on_step`` receives
    each step's metrics (progress display); ``on_sample`` is called every ``sample_every``
    steps with the student (or its EMA) to write a sample grid.
    """
    s = settings
    device = accelerator.device
    checkpoint_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"

    # 1. Models, optimizers, schedules. The teacher is frozen and never prepared or saved.
    teacher: torch.nn.Module = parts.teacher  # type: ignore[assignment]
    teacher.requires_grad_(False)
    teacher.eval()
    student_module: torch.nn.Module = parts.student  # type: ignore[assignment]
    critic_module: torch.nn.Module = parts.critic  # type: ignore[assignment]
    opt_student = torch.optim.AdamW(
        list(parts.student.trainable_parameters()),
        lr=s.student_lr,
        betas=s.adam_betas,
        weight_decay=s.weight_decay,
    )
    opt_critic = torch.optim.AdamW(
        list(parts.critic.trainable_parameters()),
        lr=s.critic_lr,
        betas=s.adam_betas,
        weight_decay=s.weight_decay,
    )
    sched_student = torch.optim.lr_scheduler.LambdaLR(opt_student, _warmup(s.warmup_steps))
    sched_critic = torch.optim.lr_scheduler.LambdaLR(opt_critic, _warmup(s.warmup_steps))
    student, critic, opt_student, opt_critic = accelerator.prepare(
        student_module, critic_module, opt_student, opt_critic
    )
    student_inner: torch.nn.Module = accelerator.unwrap_model(student)
    critic_inner: torch.nn.Module = accelerator.unwrap_model(critic)
    ema: dict[str, torch.Tensor] | None = None
    if s.ema_decay is not None:
        ema = {n: p.detach().clone() for n, p in _trainable(student_inner).items()}

    # One generator drives every random draw (prompts, noise, times), per process.
    generator = torch.Generator(device="cpu").manual_seed(s.seed + accelerator.process_index)
    schedule = parts.teacher.schedule
    timesteps = torch.tensor(s.student_timesteps, dtype=torch.float32)
    snapshots_wanted = int(getattr(parts.target, "critic_snapshots", 0))
    start_step = 0

    # 2. Resume: every trainable tensor, optimizer and scheduler state, EMA, RNG, counter.
    if resume_from is not None:
        tensors, states = load_checkpoint(resume_from)
        student_inner.load_state_dict(tensors["student"], strict=False)
        critic_inner.load_state_dict(tensors["critic"], strict=False)
        if ema is not None and "ema" in tensors:
            ema = {n: t.to(device) for n, t in tensors["ema"].items()}
        opt_student.load_state_dict(states["optim_student"])
        opt_critic.load_state_dict(states["optim_critic"])
        sched_student.load_state_dict(states["sched_student"])
        sched_critic.load_state_dict(states["sched_critic"])
        generator.set_state(states["rng"]["generator"])
        start_step = int(states["counters"]["step"])
        if accelerator.is_main_process:
            _truncate_metrics(metrics_path, start_step)

    def noise_like(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device)

    def draw_prompts() -> tuple[list[str], Conditioning]:
        prompts = parts.prompts.sample(s.batch_size, generator)
        with torch.no_grad():
            cond = parts.student.encode_prompts(prompts)
        return prompts, {k: v.to(device) for k, v in cond.items()}

    def student_sample(cond: Conditioning, with_grad: bool) -> torch.Tensor:
        # Backward simulation (DMD2 §4.5): run the student from noise, without grad, to a
        # random one of its timesteps, re-noise its x0 there, and predict from it.
        b = s.batch_size
        i = int(torch.randint(len(timesteps), (1,), generator=generator))
        x_t = noise_like((b, *parts.student.sample_shape))
        with torch.no_grad(), accelerator.autocast():
            steps_before = range(i) if s.backward_simulation else range(min(i, 1))
            x0 = None
            for j in steps_before:
                t_j = timesteps[j].expand(b).to(device)
                x0 = student(x_t, t_j, cond)
                t_next = timesteps[j + 1 if s.backward_simulation else i].expand(b).to(device)
                x_t = schedule.add_noise(x0, noise_like(tuple(x0.shape)), t_next)
        t_i = timesteps[i].expand(b).to(device)
        context = contextlib.nullcontext() if with_grad else torch.no_grad()
        with context, accelerator.autocast():
            return student(x_t, t_i, cond)

    trainable_params = {
        id(student): [p for p in student.parameters() if p.requires_grad],
        id(critic): [p for p in critic.parameters() if p.requires_grad],
    }

    def clip_and_check(model: torch.nn.Module, what: str, step: int) -> float:
        params = trainable_params[id(model)]
        max_norm = s.grad_clip if s.grad_clip is not None else float("inf")
        norm = accelerator.clip_grad_norm_(params, max_norm)
        norm_t = torch.as_tensor(norm)
        _check_finite(norm_t, f"{what} gradient norm", step)
        return float(norm_t)

    real_guidance = s.guidance_scale

    def real_x0(x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        with torch.no_grad(), accelerator.autocast():
            return teacher(x_t, t, cond, guidance_scale=real_guidance).float()

    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_x0(
        x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, snapshot: int | None
    ) -> torch.Tensor:
        with torch.no_grad(), accelerator.autocast():
            if snapshot is None:
                return critic(x_t, t, cond).float()
            return torch.func.functional_call(
                critic_inner, snapshots[snapshot], (x_t, t, cond)
            ).float()

    result = LoopResult(step=start_step)
    with _StopFlag() as stop:
        step = start_step
        while step < s.steps:
            step_start = time.perf_counter()
            metrics: dict[str, float] = {}

            # 3. Critic updates on fresh, detached student samples (two-time-scale rule).
            critic.train()
            snapshots.clear()
            critic_losses: list[float] = []
            critic_norms: list[float] = []
            for _ in range(s.critic_steps):
                opt_critic.zero_grad(set_to_none=True)
                for micro in range(s.gradient_accumulation_steps):
                    _, cond = draw_prompts()
                    x = student_sample(cond, with_grad=False).detach()
                    t = s.renoise.sample(x.shape[0], step, generator, device)
                    noise = noise_like(tuple(x.shape))
                    x_t = schedule.add_noise(x, noise, t)
                    last = micro == s.gradient_accumulation_steps - 1
                    sync = contextlib.nullcontext() if last else accelerator.no_sync(critic)
                    with sync, accelerator.autocast():
                        x0_fake = critic(x_t, t, cond)
                        loss = denoising_loss(
                            schedule.from_x0(x_t, t, x0_fake.float()),
                            schedule.training_target(x, noise, t),
                        )
                    _check_finite(loss, "critic loss", step)
                    accelerator.backward(loss / s.gradient_accumulation_steps)
                    critic_losses.append(float(loss.detach()))
                critic_norms.append(clip_and_check(critic, "critic", step))
                opt_critic.step()
                sched_critic.step()
                if snapshots_wanted:
                    snapshots.append(
                        {n: p.detach().clone() for n, p in _trainable(critic_inner).items()}
                    )
                    del snapshots[:-snapshots_wanted]
            metrics["critic/loss"] = sum(critic_losses) / len(critic_losses)
            metrics["critic/grad_norm"] = sum(critic_norms) / len(critic_norms)
            critic.eval()

            # 4. Student update: targets (and weights) from the strategy, then regression.
            student.train()
            opt_student.zero_grad(set_to_none=True)
            student_losses = []
            for micro in range(s.gradient_accumulation_steps):
                prompts, cond = draw_prompts()
                last = micro == s.gradient_accumulation_steps - 1
                sync = contextlib.nullcontext() if last else accelerator.no_sync(student)
                with sync:
                    x = student_sample(cond, with_grad=True)
                    out = parts.target(
                        TargetContext(
                            x=x,
                            prompts=prompts,
                            cond_real=cond,
                            cond_fake=cond,
                            schedule=schedule,
                            real_x0=real_x0,
                            fake_x0=fake_x0,
                            num_critic_snapshots=len(snapshots),
                            sample_t=partial(
                                s.renoise.sample, step=step, generator=generator, device=device
                            ),
                            decoder=parts.teacher.decoder,
                            rewards=parts.rewards,
                            generator=generator,
                            step=step,
                        )
                    )
                    _check_finite(out.targets, "DMD target", step)
                    _check_finite(out.weights, "target weights", step)
                    loss = group_target_loss(x, out.targets, out.weights)
                    if out.extra_loss is not None:
                        loss = loss + out.extra_loss
                    _check_finite(loss, "student loss", step)
                    accelerator.backward(loss / s.gradient_accumulation_steps)
                student_losses.append(float(loss.detach()))
                for name, value in out.metrics.items():
                    metrics[name] = value
            metrics["student/grad_norm"] = clip_and_check(student, "student", step)
            opt_student.step()
            sched_student.step()
            metrics["student/loss"] = sum(student_losses) / len(student_losses)
            if ema is not None and s.ema_decay is not None:
                decay = s.ema_decay
                with torch.no_grad():
                    for name, p in _trainable(student_inner).items():
                        ema[name].mul_(decay).add_(p.detach(), alpha=1.0 - decay)
            step += 1
            result.step = step
            metrics["step_time"] = time.perf_counter() - step_start
            metrics["lr/student"] = float(sched_student.get_last_lr()[0])

            # 5. Logging, samples, checkpoints, and a clean stop on SIGTERM/SIGINT.
            if step % s.log_every == 0 or step == s.steps:
                record = {"step": step, **metrics}
                result.metrics.append(record)
                if accelerator.is_main_process:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    accelerator.log(metrics, step=step)
            if on_step is not None:
                on_step(step, metrics)
            if on_sample is not None and s.sample_every and step % s.sample_every == 0:
                on_sample(step, _with_ema(student_inner, ema))

            interrupted = stop.signal is not None
            due = s.checkpoint_every and step % s.checkpoint_every == 0
            if due or interrupted or step == s.steps:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    tensors = {
                        "student": _trainable(student_inner),
                        "critic": _trainable(critic_inner),
                    }
                    if ema is not None:
                        tensors["ema"] = ema
                    save_checkpoint(
                        checkpoint_root,
                        step,
                        tensors,
                        {
                            "optim_student": opt_student.state_dict(),
                            "optim_critic": opt_critic.state_dict(),
                            "sched_student": sched_student.state_dict(),
                            "sched_critic": sched_critic.state_dict(),
                            "rng": {"generator": generator.get_state()},
                            "counters": {"step": step},
                        },
                        keep=s.keep_checkpoints,
                    )
                accelerator.wait_for_everyone()
            if interrupted:
                name = signal.Signals(stop.signal).name if stop.signal is not None else "signal"
                result.stopped_by = name
                code = 143 if stop.signal == signal.SIGTERM else 130
                raise RunInterrupted(
                    f"received {name} at step {step}: saved checkpoint "
                    f"{latest_checkpoint(checkpoint_root)}; continue with --resume auto",
                    exit_code=code,
                )
    if ema is not None:
        _load_ema(student_inner, ema)
    return result


def _with_ema(model: torch.nn.Module, ema: dict[str, torch.Tensor] | None) -> Any:
    """The model to sample from: itself, or a copy carrying the EMA weights."""
    if ema is None:
        return model
    shadow = copy.deepcopy(model)
    _load_ema(shadow, ema)
    return shadow


def _load_ema(model: torch.nn.Module, ema: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ema:
                p.copy_(ema[name])
