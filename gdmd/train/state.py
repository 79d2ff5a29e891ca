"""What the loop trains and what a checkpoint holds.

:class:`Components` are the built parts of a run, by role. :class:`TrainState` is everything a
checkpoint holds, live; :func:`prepare_state` builds it (optimizers, warm-up schedules,
accelerate's wrappers, EMA), :func:`checkpoint_payload` turns it into what
:func:`~gdmd.train.checkpoint.save_checkpoint` writes and :func:`restore_payload` loads it back.
Frozen weights (teacher, decoder, rewards, a LoRA's base) never go into a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from gdmd.errors import CheckpointError
from gdmd.interfaces import DiffusionModel, PromptSource, TargetStrategy, WeightedReward
from gdmd.train.checkpoint import load_checkpoint
from gdmd.train.config import LoopSettings
from gdmd.train.distributed import check_backend, is_fsdp2


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
class TrainState:
    """Everything a checkpoint holds, live: the prepared networks (DDP/FSDP2 wrappers, or
    the modules themselves on one process), their optimizers and schedules, EMA, counter."""

    student: torch.nn.Module
    critic: torch.nn.Module
    student_inner: torch.nn.Module
    critic_inner: torch.nn.Module
    opt_student: Any
    opt_critic: Any
    sched_student: Any
    sched_critic: Any
    ema: dict[str, torch.Tensor] | None
    fsdp2: bool
    step: int = 0


@dataclass
class LoopResult:
    """What :func:`gdmd.train.loop.train` returns."""

    step: int
    #: The logged metric records (``{"step": n, ...}``), as written to ``metrics.jsonl``.
    metrics: list[dict[str, float]] = field(default_factory=list)
    #: The trained state at the end (for callers that inspect or export it).
    state: TrainState | None = None


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of the parameters being trained (frozen weights never go to disk)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor from a sharded one (FSDP2 DTensor); a collective for DTensors."""
    gather = getattr(t, "full_tensor", None)
    return gather() if callable(gather) else t


def _warmup(warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)

    return factor


def prepare_state(
    parts: Components, settings: LoopSettings, accelerator: Accelerator
) -> TrainState:
    """Optimizers and schedules for student and critic, prepared by accelerate.

    Only the two trained networks are prepared; the frozen teacher, decoder and rewards never
    are (accelerate's CPU DDP would wrap a frozen model too, and a prepared model goes into
    accelerate's state). FSDP2 takes one model per ``prepare`` call, so it gets two.
    """
    check_backend(accelerator)
    tr = settings.train
    opt_student = torch.optim.AdamW(
        list(parts.student.trainable_parameters()),
        lr=tr.student_lr,
        betas=tr.adam_betas,
        weight_decay=tr.weight_decay,
    )
    opt_critic = torch.optim.AdamW(
        list(parts.critic.trainable_parameters()),
        lr=tr.critic_lr,
        betas=tr.adam_betas,
        weight_decay=tr.weight_decay,
    )
    sched_student = torch.optim.lr_scheduler.LambdaLR(opt_student, _warmup(tr.warmup_steps))
    sched_critic = torch.optim.lr_scheduler.LambdaLR(opt_critic, _warmup(tr.warmup_steps))
    fsdp2 = is_fsdp2(accelerator)
    if fsdp2:
        student, opt_student = accelerator.prepare(parts.student, opt_student)
        critic, opt_critic = accelerator.prepare(parts.critic, opt_critic)
    else:
        student, critic, opt_student, opt_critic = accelerator.prepare(
            parts.student, parts.critic, opt_student, opt_critic
        )
    student_inner: torch.nn.Module = accelerator.unwrap_model(student)
    critic_inner: torch.nn.Module = accelerator.unwrap_model(critic)
    ema = None
    if tr.ema_decay is not None:
        ema = {n: p.detach().clone() for n, p in trainable(student_inner).items()}
    return TrainState(
        student=student,
        critic=critic,
        student_inner=student_inner,
        critic_inner=critic_inner,
        opt_student=opt_student,
        opt_critic=opt_critic,
        sched_student=sched_student,
        sched_critic=sched_critic,
        ema=ema,
        fsdp2=fsdp2,
    )


def checkpoint_payload(state: TrainState) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, states)`` for :func:`save_checkpoint`. Under FSDP2 this gathers shards:
    every process must call it, in the same order."""
    tensors: dict[str, Any] = {
        "student": {n: full_tensor(p.detach()) for n, p in trainable(state.student_inner).items()},
        "critic": {n: full_tensor(p.detach()) for n, p in trainable(state.critic_inner).items()},
    }
    if state.ema is not None:
        tensors["ema"] = {n: full_tensor(t) for n, t in state.ema.items()}
    if state.fsdp2:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim_student = get_optimizer_state_dict(
            state.student, state.opt_student.optimizer, options=options
        )
        optim_critic = get_optimizer_state_dict(
            state.critic, state.opt_critic.optimizer, options=options
        )
    else:
        optim_student = state.opt_student.state_dict()
        optim_critic = state.opt_critic.state_dict()
    states = {
        "optim_student": optim_student,
        "optim_critic": optim_critic,
        "sched_student": state.sched_student.state_dict(),
        "sched_critic": state.sched_critic.state_dict(),
        "counters": {"step": state.step},
    }
    return tensors, states


def restore_payload(state: TrainState, path: Path, device: torch.device) -> None:
    """Load a checkpoint written from :func:`checkpoint_payload` into ``state``."""
    tensors, states = load_checkpoint(path)
    for role in ("student", "critic", "optim_student", "optim_critic", "counters"):
        if role not in tensors and role not in states:
            raise CheckpointError(f"{path} has no {role} files: not a gdmd training checkpoint")
    for role, module in (("student", state.student_inner), ("critic", state.critic_inner)):
        expected, saved = set(trainable(module)), set(tensors[role])
        if expected != saved:
            missing, unexpected = sorted(expected - saved), sorted(saved - expected)
            raise CheckpointError(
                f"{path} does not hold this run's {role}: missing {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                f"{' ...' if len(unexpected) > 3 else ''}"
            )
    try:
        _restore(state, tensors, states, device)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path} does not fit this run's networks or optimizers ({type(exc).__name__}: {exc})"
        ) from exc


def _restore(
    state: TrainState, tensors: dict[str, Any], states: dict[str, Any], device: torch.device
) -> None:
    if state.fsdp2:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(state.student, tensors["student"], options=options)
        set_model_state_dict(state.critic, tensors["critic"], options=options)
        set_optimizer_state_dict(
            state.student, state.opt_student.optimizer, states["optim_student"], options=options
        )
        set_optimizer_state_dict(
            state.critic, state.opt_critic.optimizer, states["optim_critic"], options=options
        )
    else:
        state.student_inner.load_state_dict(tensors["student"], strict=False)
        state.critic_inner.load_state_dict(tensors["critic"], strict=False)
        state.opt_student.load_state_dict(states["optim_student"])
        state.opt_critic.load_state_dict(states["optim_critic"])
    if state.ema is not None and "ema" in tensors:
        with torch.no_grad():
            for name, value in state.ema.items():
                value.copy_(tensors["ema"][name].to(device))
    state.sched_student.load_state_dict(states["sched_student"])
    state.sched_critic.load_state_dict(states["sched_critic"])
    state.step = int(states["counters"]["step"])
