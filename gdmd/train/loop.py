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
neither SD3 nor the toy domain. Every random draw depends only on (seed, step, draw site,
global sample index) (:mod:`gdmd.train.randomness`): resuming is exact without RNG state, and
N processes with batch ``b`` draw what one process with batch ``N * b`` draws.

On several processes (accelerate: DDP, or FSDP2 with student and critic prepared
separately), only the main process writes files, and a failure on any process stops every
process at the next agreement point, before any backward pass or optimizer step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from accelerate import Accelerator

from gdmd.errors import GdmdError, NonFiniteError, RunInterrupted
from gdmd.interfaces import (
    Conditioning,
    DiffusionModel,
    TargetContext,
)
from gdmd.losses import denoising_loss, group_target_loss
from gdmd.schedules import RenoiseSampler
from gdmd.train.checkpoint import latest_checkpoint, save_checkpoint
from gdmd.train.config import LoopSettings, TrainConfig
from gdmd.train.distributed import (
    any_process,
    mean_over_processes,
    stop_together,
)
from gdmd.train.randomness import SiteDraws
from gdmd.train.state import (
    Components,
    LoopResult,
    TrainState,
    checkpoint_payload,
    full_tensor,
    prepare_state,
    restore_payload,
    trainable,
)

__all__ = [
    "Components",
    "LoopResult",
    "LoopSettings",
    "TrainState",
    "checkpoint_payload",
    "prepare_state",
    "restore_payload",
    "train",
]


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


def _check_finite(value: torch.Tensor, what: str, step: int) -> None:
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(
            f"{what} is not finite at step {step} ({value.detach().flatten()[:4].tolist()}); "
            "stopped before the optimizer step, the last checkpoint is intact"
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` so a resumed run does not log a step twice (and a
    line torn by a kill in the middle of its write)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            logged = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if logged <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))


@contextlib.contextmanager
def _gathered(model: torch.nn.Module, fsdp2: bool) -> Any:
    """Whole parameters for a call that is not ``forward`` (``encode_prompts``): FSDP2 gathers
    shards only around ``forward``. A collective under FSDP2; nothing otherwise."""
    if not fsdp2:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def renoise_sampler(train: TrainConfig) -> RenoiseSampler:
    """The renoise-time sampler ``[train]`` describes."""
    low, high = train.renoise_range
    return RenoiseSampler(
        low, high, beta=train.renoise_beta, anneal_steps=train.renoise_anneal_steps
    )


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
    each step's metrics, averaged over processes (progress display); ``on_sample`` is called
    every ``sample_every`` steps **on every process** with the student (or its EMA), so a
    sampler can split its prompts over the processes.
    """
    s = settings
    renoise = renoise_sampler(s.train)
    device = accelerator.device
    checkpoint_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    main = accelerator.is_main_process

    # 1. Models, optimizers, schedules. The teacher is frozen and never prepared or saved.
    teacher: torch.nn.Module = parts.teacher  # type: ignore[assignment]
    teacher.requires_grad_(False)
    teacher.eval()
    state = prepare_state(parts, s, accelerator)
    student, critic = state.student, state.critic
    schedule = parts.teacher.schedule
    timesteps = torch.tensor(s.student_timesteps, dtype=torch.float32)
    sample_shape = tuple(parts.student.sample_shape)
    snapshots_wanted = int(getattr(parts.target, "critic_snapshots", 0))
    # This process's samples in the global batch of every draw site.
    first = accelerator.process_index * s.train.batch_size
    my_samples = range(first, first + s.train.batch_size)

    # 2. Resume: every trainable tensor, optimizer and scheduler state, EMA, counter. The
    # random stream needs no state (it is a function of the step).
    if resume_from is not None:
        restore_payload(state, resume_from, device)
    if main:  # lines a killed run logged after its last checkpoint are logged again
        _truncate_metrics(metrics_path, state.step)

    def draws_at(step: int, *site: int | str) -> SiteDraws:
        return SiteDraws(s.seed, step, site, my_samples, device, accelerator.process_index)

    def draw_prompts(draws: SiteDraws) -> tuple[list[str], Conditioning]:
        prompts = draws.prompts(parts.prompts)
        with torch.no_grad(), _gathered(student, state.fsdp2):
            cond = parts.student.encode_prompts(prompts)
        return prompts, {k: v.to(device) for k, v in cond.items()}

    def student_sample(cond: Conditioning, draws: SiteDraws, with_grad: bool) -> torch.Tensor:
        # Backward simulation (DMD2 §4.5): run the student from noise, without grad, to a
        # random one of its timesteps (the same for the whole global batch), re-noise its x0
        # there, and predict from it.
        b = s.train.batch_size
        i = draws.shared_index(len(timesteps))
        x_t = draws.noise(sample_shape)
        with torch.no_grad(), accelerator.autocast():
            steps_before = range(i) if s.train.backward_simulation else range(min(i, 1))
            for j in steps_before:
                t_j = timesteps[j].expand(b).to(device)
                x0 = student(x_t, t_j, cond)
                t_next = timesteps[j + 1 if s.train.backward_simulation else i].expand(b).to(device)
                x_t = schedule.add_noise(x0, draws.noise(sample_shape).to(x0.dtype), t_next)
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
        max_norm = s.train.grad_clip if s.train.grad_clip is not None else float("inf")
        norm_t = torch.as_tensor(
            full_tensor(torch.as_tensor(accelerator.clip_grad_norm_(params, max_norm)))
        )
        failure: GdmdError | None = None
        try:
            _check_finite(norm_t, f"{what} gradient norm", step)
        except NonFiniteError as exc:
            failure = exc
        stop_together(accelerator, failure, step)
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
                state.critic_inner, snapshots[snapshot], (x_t, t, cond)
            ).float()

    result = LoopResult(step=state.step, state=state)
    with _StopFlag() as stop:
        step = state.step
        while step < s.train.steps:
            step_start = time.perf_counter()
            metrics: dict[str, float] = {}

            # 3. Critic updates on fresh, detached student samples (two-time-scale rule).
            critic.train()
            snapshots.clear()
            critic_losses: list[float] = []
            critic_norms: list[float] = []
            for inner in range(s.train.critic_steps):
                state.opt_critic.zero_grad(set_to_none=True)
                for micro in range(s.gradient_accumulation_steps):
                    draws = draws_at(step, "critic", inner, micro)
                    last = micro == s.gradient_accumulation_steps - 1
                    sync = contextlib.nullcontext() if last else accelerator.no_sync(critic)
                    failure: GdmdError | None = None
                    with sync:
                        try:
                            _, cond = draw_prompts(draws)
                            x = student_sample(cond, draws, with_grad=False).detach()
                            t = draws.times(renoise)
                            noise = draws.noise(sample_shape).to(x.dtype)
                            x_t = schedule.add_noise(x, noise, t)
                            with accelerator.autocast():
                                x0_fake = critic(x_t, t, cond)
                                loss = denoising_loss(
                                    schedule.from_x0(x_t, t, x0_fake.float()),
                                    schedule.training_target(x, noise, t),
                                )
                            _check_finite(loss, "critic loss", step)
                        except GdmdError as exc:
                            failure = exc
                        stop_together(accelerator, failure, step)
                        accelerator.backward(loss / s.gradient_accumulation_steps)
                    critic_losses.append(float(loss.detach()))
                critic_norms.append(clip_and_check(critic, "critic", step))
                state.opt_critic.step()
                state.sched_critic.step()
                if snapshots_wanted:
                    snapshots.append(
                        {n: p.detach().clone() for n, p in trainable(state.critic_inner).items()}
                    )
                    del snapshots[:-snapshots_wanted]
            metrics["critic/loss"] = sum(critic_losses) / len(critic_losses)
            metrics["critic/grad_norm"] = sum(critic_norms) / len(critic_norms)
            critic.eval()

            # 4. Student update: targets (and weights) from the strategy, then regression.
            student.train()
            state.opt_student.zero_grad(set_to_none=True)
            student_losses = []
            for micro in range(s.gradient_accumulation_steps):
                draws = draws_at(step, "student", micro)
                last = micro == s.gradient_accumulation_steps - 1
                sync = contextlib.nullcontext() if last else accelerator.no_sync(student)
                failure = None
                with sync:
                    try:
                        prompts, cond = draw_prompts(draws)
                        x = student_sample(cond, draws, with_grad=True)
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
                                sample_t=partial(draws.times_for, renoise),
                                decoder=parts.teacher.decoder,
                                rewards=parts.rewards,
                                generator=draws.process,
                                step=step,
                                sample_noise=partial(draws.noise_for, shape=sample_shape),
                                renoise_range=(renoise.low, renoise.high),
                            )
                        )
                        _check_finite(out.targets, "DMD target", step)
                        _check_finite(out.weights, "target weights", step)
                        loss = group_target_loss(x, out.targets, out.weights)
                        if out.extra_loss is not None:
                            loss = loss + out.extra_loss
                        _check_finite(loss, "student loss", step)
                    except GdmdError as exc:
                        failure = exc
                    stop_together(accelerator, failure, step)
                    accelerator.backward(loss / s.gradient_accumulation_steps)
                student_losses.append(float(loss.detach()))
                for name, value in out.metrics.items():
                    metrics[name] = value
            metrics["student/grad_norm"] = clip_and_check(student, "student", step)
            state.opt_student.step()
            state.sched_student.step()
            metrics["student/loss"] = sum(student_losses) / len(student_losses)
            if state.ema is not None and s.train.ema_decay is not None:
                decay = s.train.ema_decay
                with torch.no_grad():
                    for name, p in trainable(state.student_inner).items():
                        state.ema[name].mul_(decay).add_(p.detach(), alpha=1.0 - decay)
            step += 1
            state.step = step
            result.step = step
            metrics["step_time"] = time.perf_counter() - step_start
            metrics["lr/student"] = float(state.sched_student.get_last_lr()[0])

            # 5. Logging, samples, checkpoints, and a clean stop on SIGTERM/SIGINT. Metrics
            # are means over the processes; only the main process writes.
            metrics = mean_over_processes(accelerator, metrics)
            if step % s.log_every == 0 or step == s.train.steps:
                record = {"step": step, **metrics}
                result.metrics.append(record)
                if main:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    accelerator.log(metrics, step=step)
            if on_step is not None:
                on_step(step, metrics)
            if on_sample is not None and s.train.sample_every and step % s.train.sample_every == 0:
                on_sample(step, _with_ema(state.student_inner, state.ema))

            # Every process must agree to stop at the same step, or one would wait for the
            # others in the next step's collectives.
            interrupted = any_process(accelerator, stop.signal is not None)
            due = s.train.checkpoint_every and step % s.train.checkpoint_every == 0
            if due or interrupted or step == s.train.steps:
                tensors, states = checkpoint_payload(state)
                accelerator.wait_for_everyone()
                if main:
                    save_checkpoint(
                        checkpoint_root, step, tensors, states, keep=s.train.keep_checkpoints
                    )
                accelerator.wait_for_everyone()
            if interrupted:
                received = stop.signal if stop.signal is not None else signal.SIGTERM
                name = signal.Signals(received).name
                result.stopped_by = name
                code = 143 if received == signal.SIGTERM else 130
                raise RunInterrupted(
                    f"received {name} at step {step}: saved checkpoint "
                    f"{latest_checkpoint(checkpoint_root)}; continue with --resume auto",
                    exit_code=code,
                )
    if state.ema is not None:
        _load_ema(state.student_inner, state.ema)
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
