"""The distillation loop: one function, read top to bottom.

Each student update (DMD2's two-time-scale rule, Yin et al. 2024):

0. Every prompt batch of the update is drawn and encoded up front, in one text-encoder call;
   each phase reuses its batch's conditioning (teacher, critic and student alike). The
   student's batch holds each prompt in ``prompt_repeats`` consecutive rows when the target
   strategy asks for it (:attr:`gdmd.interfaces.TargetStrategy.prompt_repeats`: GDMD's
   ``group = "samples"``).
1. ``critic_steps`` critic updates: a fresh no-grad student sample by backward simulation,
   then the teacher's own denoising loss on it (the critic tracks the student's distribution).
   The critic's states after each update are kept when the target strategy asks for them
   (:attr:`gdmd.interfaces.TargetStrategy.critic_snapshots`: GDMD's ``vary = "fake"`` groups).
2. One student update: a student sample **with grad** at a random one of its timesteps
   (backward simulation), the target strategy turns it into targets and weights, and the
   student regresses onto them (plus the strategy's extra loss, for ``dmdr``).
3. Metrics, sample grids, checkpoints, and a clean stop on SIGTERM/SIGINT.

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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import torch
from accelerate import Accelerator

from gdmd.errors import ContractError, GdmdError, NonFiniteError, RecipeError, RunInterrupted
from gdmd.interfaces import Conditioning, DiffusionModel, TargetContext, TargetStrategy
from gdmd.losses import denoising_loss, group_target_loss
from gdmd.schedules import RenoiseSampler
from gdmd.train.checkpoint import latest_checkpoint, save_checkpoint
from gdmd.train.config import LoopSettings, TrainConfig
from gdmd.train.distributed import any_process, mean_over_processes, stop_together
from gdmd.train.randomness import SiteDraws, derive_seed
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
    "LoopContext",
    "LoopResult",
    "LoopSettings",
    "PromptBatch",
    "TrainState",
    "checkpoint_payload",
    "critic_snapshots",
    "prepare_state",
    "prompt_repeats",
    "renoise_sampler",
    "restore_payload",
    "train",
]

OnStep = Callable[[int, dict[str, float]], None]
OnSample = Callable[[int, DiffusionModel], None]


def renoise_sampler(train: TrainConfig) -> RenoiseSampler:
    """The renoise-time sampler ``[train]`` describes."""
    low, high = train.renoise_range
    return RenoiseSampler(
        low, high, beta=train.renoise_beta, anneal_steps=train.renoise_anneal_steps
    )


@dataclass
class LoopContext:
    """What every phase reads: the run's parts and settings, its live state, and what is
    derived from them once before the first step."""

    parts: Components
    settings: LoopSettings
    accelerator: Accelerator
    state: TrainState
    run_dir: Path
    renoise: RenoiseSampler
    #: The student's fixed times, ``[steps]``.
    timesteps: torch.Tensor
    sample_shape: tuple[int, ...]
    #: This process's samples in the global batch of every draw site.
    my_samples: range
    student_params: list[torch.Tensor]
    critic_params: list[torch.Tensor]
    #: How many critic states to keep (the target strategy's ``critic_snapshots``).
    snapshots_wanted: int
    #: Consecutive student rows that share a prompt (the strategy's ``prompt_repeats``).
    prompt_repeats: int
    #: Critic states kept after this step's critic updates (the newest last).
    snapshots: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def train(self) -> TrainConfig:
        return self.settings.train

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def micro_batches(self) -> int:
        return self.settings.gradient_accumulation_steps


@dataclass
class PromptBatch:
    """One draw site's prompts, their conditioning, and the site's draws still to come."""

    draws: SiteDraws
    prompts: list[str]
    cond: Conditioning


def train(
    parts: Components,
    settings: LoopSettings,
    accelerator: Accelerator,
    run_dir: Path,
    *,
    resume_from: Path | None = None,
    on_step: OnStep | None = None,
    on_sample: OnSample | None = None,
) -> LoopResult:
    """Distil ``parts.student`` from ``parts.teacher`` for ``settings.train.steps`` updates.

    ``resume_from``: a checkpoint folder to continue from (exactly). ``on_step`` receives
    each step's metrics, averaged over processes (progress display); ``on_sample`` is called
    every ``sample_every`` steps **on every process** with the student (or its EMA), so a
    sampler can split its prompts over the processes.
    """
    ctx = _start(parts, settings, accelerator, run_dir)
    state, tr = ctx.state, settings.train
    # Resume: every trainable tensor, optimizer and scheduler state, EMA, counter. The random
    # stream needs no state (it is a function of the step).
    if resume_from is not None:
        restore_payload(state, resume_from, ctx.device)
    if accelerator.is_main_process:  # lines a killed run logged after its checkpoint go again
        _truncate_metrics(run_dir / "metrics.jsonl", state.step)
    result = LoopResult(step=state.step, state=state)
    with _StopFlag() as stop:
        while state.step < tr.steps:
            step = state.step
            started = time.perf_counter()
            # 0. Every prompt batch of this update, encoded once.
            critic_batches, student_batches = _agreed(ctx, step, draw_update_prompts, ctx, step)
            # 1. Critic updates on fresh, detached student samples (two-time-scale rule).
            metrics = critic_phase(ctx, step, critic_batches)
            # 2. Student update: targets (and weights) from the strategy, then regression.
            metrics.update(student_phase(ctx, step, student_batches))
            state.step = result.step = step + 1
            metrics["step_time"] = time.perf_counter() - started
            metrics["lr/student"] = float(state.sched_student.get_last_lr()[0])
            # 3. Logging, samples, checkpoints, and a clean stop on SIGTERM/SIGINT.
            log_metrics(ctx, result, metrics, on_step)
            if on_sample is not None and tr.sample_every and state.step % tr.sample_every == 0:
                on_sample(state.step, _with_ema(state.student_inner, state.ema))
            # Every process must agree to stop at the same step, or one would wait for the
            # others in the next step's collectives.
            interrupted = any_process(accelerator, stop.signal is not None)
            due = tr.checkpoint_every and state.step % tr.checkpoint_every == 0
            if due or interrupted or state.step == tr.steps:
                save(ctx)
            if interrupted:
                _interrupt(ctx, stop.signal)
    if state.ema is not None:
        _load_ema(state.student_inner, state.ema)
    return result


# -- set-up ------------------------------------------------------------------------------------


def _start(
    parts: Components, settings: LoopSettings, accelerator: Accelerator, run_dir: Path
) -> LoopContext:
    """The prepared state and everything the phases derive from the settings once. The
    teacher is frozen and never prepared or saved."""
    teacher: torch.nn.Module = parts.teacher  # type: ignore[assignment]
    teacher.requires_grad_(False)
    teacher.eval()
    state = prepare_state(parts, settings, accelerator)
    first = accelerator.process_index * settings.train.batch_size
    return LoopContext(
        parts=parts,
        settings=settings,
        accelerator=accelerator,
        state=state,
        run_dir=run_dir,
        renoise=renoise_sampler(settings.train),
        timesteps=torch.tensor(settings.student_timesteps, dtype=torch.float32),
        sample_shape=tuple(parts.student.sample_shape),
        my_samples=range(first, first + settings.train.batch_size),
        student_params=[p for p in state.student.parameters() if p.requires_grad],
        critic_params=[p for p in state.critic.parameters() if p.requires_grad],
        snapshots_wanted=critic_snapshots(parts.target),
        prompt_repeats=prompt_repeats(parts.target, settings.train.batch_size),
    )


def critic_snapshots(target: TargetStrategy) -> int:
    """The number of critic states ``target`` asks the loop to keep, checked."""
    if not isinstance(target, TargetStrategy):
        raise ContractError(
            f"target strategy {type(target).__module__}.{type(target).__qualname__} does not "
            "implement gdmd.interfaces.TargetStrategy: it needs the attributes needs_rewards, "
            "needs_differentiable_reward, critic_snapshots (0 when it uses only the current "
            "critic), prompt_repeats (1 when every sample has its own prompt) and a __call__ "
            "method"
        )
    wanted = target.critic_snapshots
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 0:
        raise ContractError(
            f"target strategy {type(target).__qualname__} has critic_snapshots = {wanted!r}, "
            "expected a non-negative int"
        )
    return wanted


def prompt_repeats(target: TargetStrategy, batch_size: int) -> int:
    """How many consecutive student rows ``target`` wants per prompt, checked against the
    per-process ``batch_size`` (each process must hold whole prompt groups)."""
    repeats = target.prompt_repeats
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ContractError(
            f"target strategy {type(target).__qualname__} has prompt_repeats = {repeats!r}, "
            "expected a positive int"
        )
    if batch_size % repeats:
        raise RecipeError(
            [
                f"[train] batch_size: {batch_size} is not a multiple of {repeats}, the samples "
                f"per prompt the target strategy {type(target).__qualname__} asks for "
                '([target] k with group = "samples"); each process\'s batch must hold whole '
                "groups of samples"
            ]
        )
    return repeats


# -- 0. prompts --------------------------------------------------------------------------------


def draw_update_prompts(
    ctx: LoopContext, step: int
) -> tuple[list[list[PromptBatch]], list[PromptBatch]]:
    """Every prompt batch of one update: ``critic[inner][micro]`` and ``student[micro]``.

    Each draw site draws its prompts first, as it always has, so the random stream does not
    depend on when they are drawn; all of them are then encoded in **one** text-encoder call,
    without grad. The encoders are frozen and outside the sharded networks (FSDP2), so
    nothing is gathered for it. The student's sites repeat each prompt ``prompt_repeats``
    times in a row (:meth:`SiteDraws.prompts`); the critic's never do.
    """
    micro, critic_steps = range(ctx.micro_batches), range(ctx.train.critic_steps)
    sites: list[tuple[int | str, ...]] = [
        ("critic", inner, m) for inner in critic_steps for m in micro
    ]
    sites += [("student", m) for m in micro]
    draws = [_site(ctx, step, *site) for site in sites]
    repeats = [1 if site[0] == "critic" else ctx.prompt_repeats for site in sites]
    prompts = [d.prompts(ctx.parts.prompts, r) for d, r in zip(draws, repeats, strict=True)]
    with torch.no_grad():
        encoded = ctx.parts.student.encode_prompts([p for batch in prompts for p in batch])
    sizes = [len(batch) for batch in prompts]
    parts = {key: value.to(ctx.device).split(sizes) for key, value in encoded.items()}
    batches = [
        PromptBatch(d, p, {key: chunks[i] for key, chunks in parts.items()})
        for i, (d, p) in enumerate(zip(draws, prompts, strict=True))
    ]
    k = len(micro)
    critic = [batches[i * k : (i + 1) * k] for i in critic_steps]
    return critic, batches[len(critic_steps) * k :]


def _site(ctx: LoopContext, step: int, *site: int | str) -> SiteDraws:
    return SiteDraws(
        ctx.settings.seed,
        step,
        site,
        ctx.my_samples,
        ctx.device,
        ctx.accelerator.process_index,
    )


# -- 1. critic ---------------------------------------------------------------------------------


def critic_phase(
    ctx: LoopContext, step: int, batches: list[list[PromptBatch]]
) -> dict[str, float]:
    """``critic_steps`` critic updates, each on ``batches[inner]`` (one batch per
    micro-batch); keeps the critic's states when the target strategy asks for them."""
    state, wanted = ctx.state, ctx.snapshots_wanted
    state.critic.train()
    ctx.snapshots.clear()
    losses: list[float] = []
    norms: list[float] = []
    for micro_batches in batches:
        state.opt_critic.zero_grad(set_to_none=True)
        for batch in micro_batches:
            last = batch is micro_batches[-1]
            sync = contextlib.nullcontext() if last else ctx.accelerator.no_sync(state.critic)
            with sync:
                loss = _agreed(ctx, step, critic_loss, ctx, step, batch)
                ctx.accelerator.backward(loss / ctx.micro_batches)
            losses.append(float(loss.detach()))
        norms.append(_clip_and_check(ctx, ctx.critic_params, "critic", step))
        state.opt_critic.step()
        state.sched_critic.step()
        if wanted:
            kept = {n: p.detach().clone() for n, p in trainable(state.critic_inner).items()}
            ctx.snapshots.append(kept)
            del ctx.snapshots[:-wanted]
    state.critic.eval()
    return {
        "critic/loss": sum(losses) / len(losses),
        "critic/grad_norm": sum(norms) / len(norms),
    }


def critic_loss(ctx: LoopContext, step: int, batch: PromptBatch) -> torch.Tensor:
    """The teacher's denoising loss of the critic on a detached student sample."""
    schedule, draws = ctx.parts.teacher.schedule, batch.draws
    x = student_sample(ctx, batch, with_grad=False).detach()
    t = draws.times(ctx.renoise)
    noise = draws.noise(ctx.sample_shape).to(x.dtype)
    x_t = schedule.add_noise(x, noise, t)
    with ctx.accelerator.autocast():
        x0_fake = ctx.state.critic(x_t, t, batch.cond)
        loss = denoising_loss(
            schedule.from_x0(x_t, t, x0_fake.float()), schedule.training_target(x, noise, t)
        )
    _check_finite(loss, "critic loss", step)
    return loss


# -- 2. student --------------------------------------------------------------------------------


def student_phase(ctx: LoopContext, step: int, batches: list[PromptBatch]) -> dict[str, float]:
    """One student update over its micro-batches, then the EMA."""
    state = ctx.state
    state.student.train()
    state.opt_student.zero_grad(set_to_none=True)
    metrics: dict[str, float] = {}
    guidance = teacher_guidance_scale(ctx.settings, step)
    if ctx.settings.guidance_jitter > 0:
        metrics["teacher/guidance_scale"] = guidance
    losses: list[float] = []
    for batch in batches:
        last = batch is batches[-1]
        sync = contextlib.nullcontext() if last else ctx.accelerator.no_sync(state.student)
        with sync:
            loss, target_metrics = _agreed(ctx, step, student_loss, ctx, step, batch, guidance)
            ctx.accelerator.backward(loss / ctx.micro_batches)
        losses.append(float(loss.detach()))
        metrics.update(target_metrics)
    metrics["student/grad_norm"] = _clip_and_check(ctx, ctx.student_params, "student", step)
    state.opt_student.step()
    state.sched_student.step()
    metrics["student/loss"] = sum(losses) / len(losses)
    decay = ctx.train.ema_decay
    if state.ema is not None and decay is not None:
        with torch.no_grad():
            for name, p in trainable(state.student_inner).items():
                state.ema[name].mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    return metrics


def teacher_guidance_scale(settings: LoopSettings, step: int) -> float:
    """The teacher's CFG scale for step ``step``'s student update: ``guidance_scale``, or with
    ``guidance_jitter`` ``j > 0`` one draw from ``guidance_scale + j * (2u - 1)``, ``u`` uniform
    in [0, 1) (DMDR jitters the real score's CFG by +-0.5 at every generator update). The draw
    depends only on (seed, step): the same on every process and after a resume."""
    jitter = settings.guidance_jitter
    if jitter <= 0:
        return settings.guidance_scale
    generator = torch.Generator().manual_seed(derive_seed(settings.seed, "cfg-jitter", step))
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return settings.guidance_scale + jitter * (2.0 * u - 1.0)


def student_loss(
    ctx: LoopContext, step: int, batch: PromptBatch, guidance_scale: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The strategy's targets for a student sample with grad, and the regression onto them;
    every teacher call guides with ``guidance_scale`` (:func:`teacher_guidance_scale`)."""
    draws, tr = batch.draws, ctx.train
    x = student_sample(ctx, batch, with_grad=True)
    out = ctx.parts.target(
        TargetContext(
            x=x,
            prompts=batch.prompts,
            cond_real=batch.cond,
            cond_fake=batch.cond,
            schedule=ctx.parts.teacher.schedule,
            real_x0=partial(_real_x0, ctx, guidance_scale),
            fake_x0=partial(_fake_x0, ctx),
            num_critic_snapshots=len(ctx.snapshots),
            sample_t=partial(draws.times_for, ctx.renoise),
            decoder=ctx.parts.teacher.decoder,
            rewards=ctx.parts.rewards,
            generator=draws.process,
            step=step,
            sample_noise=partial(draws.noise_for, shape=ctx.sample_shape),
            renoise_range=(tr.renoise_range[0], tr.renoise_range[1]),
        )
    )
    _check_finite(out.targets, "DMD target", step)
    _check_finite(out.weights, "target weights", step)
    loss = group_target_loss(x, out.targets, out.weights)
    if out.extra_loss is not None:
        loss = loss + out.extra_loss
    _check_finite(loss, "student loss", step)
    return loss, out.metrics


def student_sample(ctx: LoopContext, batch: PromptBatch, with_grad: bool) -> torch.Tensor:
    """Backward simulation (DMD2 §4.5): run the student from noise, without grad, to a random
    one of its timesteps (the same for the whole global batch), re-noise its x0 there, and
    predict from it."""
    draws, cond, student = batch.draws, batch.cond, ctx.state.student
    schedule, timesteps, shape = ctx.parts.teacher.schedule, ctx.timesteps, ctx.sample_shape
    b, device, simulate = ctx.train.batch_size, ctx.device, ctx.train.backward_simulation
    i = draws.shared_index(len(timesteps))
    x_t = draws.noise(shape)
    with torch.no_grad(), ctx.accelerator.autocast():
        for j in range(i) if simulate else range(min(i, 1)):
            x0 = student(x_t, timesteps[j].expand(b).to(device), cond)
            t_next = timesteps[j + 1 if simulate else i].expand(b).to(device)
            x_t = schedule.add_noise(x0, draws.noise(shape).to(x0.dtype), t_next)
    t_i = timesteps[i].expand(b).to(device)
    grad = contextlib.nullcontext() if with_grad else torch.no_grad()
    with grad, ctx.accelerator.autocast():
        return student(x_t, t_i, cond)


def _real_x0(
    ctx: LoopContext,
    guidance_scale: float,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
) -> torch.Tensor:
    """The teacher's guided x0-prediction (the "real score"), without grad."""
    teacher: Any = ctx.parts.teacher
    with torch.no_grad(), ctx.accelerator.autocast():
        return teacher(x_t, t, cond, guidance_scale=guidance_scale).float()


def _fake_x0(
    ctx: LoopContext,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    snapshot: int | None,
) -> torch.Tensor:
    """The critic's x0-prediction (the "fake score"), now or at a kept state, without grad."""
    with torch.no_grad(), ctx.accelerator.autocast():
        if snapshot is None:
            return ctx.state.critic(x_t, t, cond).float()
        weights = ctx.snapshots[snapshot]
        return torch.func.functional_call(ctx.state.critic_inner, weights, (x_t, t, cond)).float()


# -- agreement between processes ---------------------------------------------------------------


def _agreed(ctx: LoopContext, step: int, compute: Callable[..., Any], *args: Any) -> Any:
    """``compute(*args)``, after every process agreed that none of them failed: a
    :class:`GdmdError` on any process stops every process here, before any backward pass."""
    failure: GdmdError | None = None
    value = None
    try:
        value = compute(*args)
    except GdmdError as exc:
        failure = exc
    stop_together(ctx.accelerator, failure, step)
    return value


def _clip_and_check(ctx: LoopContext, params: list[torch.Tensor], what: str, step: int) -> float:
    """Clip the gradient norm (``grad_clip``, or only measure it) and stop every process if
    it is not finite, before the optimizer step."""
    max_norm = ctx.train.grad_clip if ctx.train.grad_clip is not None else float("inf")
    norm = torch.as_tensor(
        full_tensor(torch.as_tensor(ctx.accelerator.clip_grad_norm_(params, max_norm)))
    )
    _agreed(ctx, step, _check_finite, norm, f"{what} gradient norm", step)
    return float(norm)


def _check_finite(value: torch.Tensor, what: str, step: int) -> None:
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(
            f"{what} is not finite at step {step} ({value.detach().flatten()[:4].tolist()}); "
            "stopped before the optimizer step, the last checkpoint is intact"
        )


# -- 3. logging, checkpoints, stopping ---------------------------------------------------------


def log_metrics(
    ctx: LoopContext, result: LoopResult, metrics: dict[str, float], on_step: OnStep | None
) -> None:
    """Metrics averaged over the processes: every ``log_every`` steps (and at the last) a
    line in ``metrics.jsonl`` and the trackers, written by the main process only."""
    step, accelerator = ctx.state.step, ctx.accelerator
    metrics = mean_over_processes(accelerator, metrics)
    if step % ctx.settings.log_every == 0 or step == ctx.train.steps:
        record = {"step": step, **metrics}
        result.metrics.append(record)
        if accelerator.is_main_process:
            with (ctx.run_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            accelerator.log(metrics, step=step)
    if on_step is not None:
        on_step(step, metrics)


def save(ctx: LoopContext) -> None:
    """A checkpoint of the current state. Every process gathers (FSDP2); the main writes."""
    tensors, states = checkpoint_payload(ctx.state)
    ctx.accelerator.wait_for_everyone()
    if ctx.accelerator.is_main_process:
        save_checkpoint(
            ctx.run_dir / "checkpoints",
            ctx.state.step,
            tensors,
            states,
            keep=ctx.train.keep_checkpoints,
        )
    ctx.accelerator.wait_for_everyone()


def _interrupt(ctx: LoopContext, received: int | None) -> NoReturn:
    """Stop after a signal (on any process), the checkpoint saved: 143 for SIGTERM."""
    received = received if received is not None else signal.SIGTERM
    name = signal.Signals(received).name
    raise RunInterrupted(
        f"received {name} at step {ctx.state.step}: saved checkpoint "
        f"{latest_checkpoint(ctx.run_dir / 'checkpoints')}; continue with --resume auto",
        exit_code=143 if received == signal.SIGTERM else 130,
    )


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
