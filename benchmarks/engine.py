"""Engine benchmarks on the built-in ``tiny-unet`` family, on CPU.

    python benchmarks/engine.py [--steps N] [--batch B] [--repeats R] [--threads T]
                                [--chunk-size C]

Three measurements (results and notes: docs/benchmarks.md, "Engine overhead"):

1. **Loop overhead**: the real loop (:func:`gdmd.train.loop.train`, ``dmd`` target, built from a
   recipe through :mod:`gdmd.run.build`, metrics logged every step to ``metrics.jsonl``, no
   checkpoint until the end) against a minimal hand-written loop doing the same forward and
   backward passes: same critic updates, backward simulation, batch, teacher/critic/student
   forwards, AdamW and gradient clipping, drawing the loop's per-sample random numbers
   (:mod:`gdmd.train.randomness`) at the same sites in the same order. Both start from the
   same weights and seed, so the benchmark also checks that they compute the same thing, bit
   for bit (losses step by step, student and critic weights at the end).
2. **GDMD cost**: a ``gdmd`` step (K = 4, vary = "t", the cheap ``channel`` reward) against a
   ``dmd`` step through the real loop, plus a timed breakdown of one student update of each.
3. **Peak memory** of the student step (sample with grad, target strategy, loss, backward):
   ``gdmd`` (K = 4, and with ``chunk_size``, default the batch) against ``dmdr`` with the same
   differentiable reward (the toy alignment
   model: a conv image encoder and a transformer text encoder, random weights; its cost does
   not depend on its training). Two measures: the bytes autograd keeps for backward (unique
   storages packed through ``torch.autograd.graph.saved_tensors_hooks``, model weights
   excluded) and the peak of the bytes allocated by the CPU allocator above the step's start,
   from ``torch.profiler`` memory events.

Timings compare two loops run in lockstep in one process (one step of A, one step of B, ...;
see :func:`lockstep`), in wall and CPU time, reported as medians of ratios: the development
machine is a shared 2-core CPU, so absolute times drift with the neighbours' load.
"""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # keep torch.profiler's start/stop lines quiet

import argparse  # noqa: E402
import contextlib
import dataclasses
import functools
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from gdmd.interfaces import TargetContext
from gdmd.losses import denoising_loss, dmd_gradient, group_target_loss, implicit_target
from gdmd.manager import build_plugin_manager
from gdmd.recipe import load_recipe
from gdmd.run.build import build_components, loop_settings, make_accelerator
from gdmd.train.config import LoopSettings
from gdmd.train.loop import renoise_sampler, train
from gdmd.train.randomness import SiteDraws

OnStep = Callable[[int, dict[str, float]], None]

#: The benchmark model: a 16x16 tiny-unet of about 0.4M parameters.
ARCHITECTURE: dict[str, Any] = {
    "image_size": 16,
    "channels": (24, 48),
    "attention_levels": (-1,),
    "text_width": 32,
    "text_layers": 1,
    "heads": 2,
}

#: Prompts of the toy grammar (the alignment reward refuses words it does not know).
PROMPTS = [
    "a red circle", "a blue square", "a green triangle", "two yellow circles",
    "a red square left of a blue circle", "three green squares", "a blue triangle",
    "a yellow square above a red triangle",
]  # fmt: skip

DMD = 'kind = "dmd"'
GDMD = 'kind = "gdmd"\nk = 4\nvary = "t"'
DMDR = 'kind = "dmdr"'
CHANNEL = '[reward.red]\nkind = "channel"\nchannel = "red"'


def alignment_reward(path: Path) -> str:
    return f'[reward.align]\nkind = "toy-alignment"\npath = "{path}"'


# -- set-up -----------------------------------------------------------------------------------


def save_teacher(directory: Path) -> int:
    """A tiny-unet with its zero-initialised output layers perturbed, as a trained teacher's
    would be (so every parameter gets a gradient and attention is not skipped)."""
    from gdmd.models.tiny import TinyDiffusionModel
    from gdmd.models.tiny_config import TinyUNetConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyDiffusionModel(TinyUNetConfig(**ARCHITECTURE))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def save_alignment_model(directory: Path) -> int:
    """The toy alignment model with random weights (only its cost matters here)."""
    from gdmd.toy.alignment import AlignmentModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AlignmentModel()
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


@dataclasses.dataclass
class Setup:
    """Everything one benchmark run needs: a recipe's built parts, settings, accelerator."""

    parts: Any  # a Components whose models are tiny-unet nn.Modules
    settings: LoopSettings
    accelerator: Any
    run_dir: Path


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.pm = build_plugin_manager(load_entrypoints=False)
        self.teacher_dir = root / "teacher"
        self.params = save_teacher(self.teacher_dir)  # updated by build()
        self.alignment_dir = root / "alignment"
        self.alignment_params = 0
        self.runs = 0

    def alignment(self) -> str:
        if not self.alignment_params:
            self.alignment_params = save_alignment_model(self.alignment_dir)
        return alignment_reward(self.alignment_dir)

    def recipe(self, target: str, rewards: str, steps: int, seed: int) -> str:
        a = self.args
        self.runs += 1
        prompts = ", ".join(f'"{p}"' for p in PROMPTS)
        return f"""
[run]
name = "run-{self.runs}"
seed = {seed}
output_dir = "{self.root / "runs"}"

[teacher]
kind = "tiny-unet"
model = "{self.teacher_dir}"
guidance_scale = 4.0

[student]
steps = 4

[critic]

{rewards}

[target]
{target}

[prompts]
kind = "list"
prompts = [{prompts}]

[train]
steps = {steps}
batch_size = {a.batch}
critic_steps = {a.critic_steps}
student_lr = 1e-4
critic_lr = 1e-4
checkpoint_every = 0
keep_checkpoints = 1

[accelerate]
cpu = true

[log]
trackers = ["jsonl"]
every = 1
"""

    def build(self, target: str, rewards: str, steps: int, seed: int = 0) -> Setup:
        path = self.root / f"recipe-{self.runs + 1}.toml"
        path.write_text(self.recipe(target, rewards, steps, seed))
        recipe = load_recipe(path, self.pm)
        run_dir = Path(recipe.run.output_dir) / recipe.run.name
        run_dir.mkdir(parents=True)
        accelerator = make_accelerator(recipe, run_dir)
        parts = build_components(recipe, accelerator)
        self.params = sum(p.numel() for p in parts.student.trainable_parameters())
        return Setup(parts, loop_settings(recipe, parts.teacher.schedule), accelerator, run_dir)


# -- 1. the real loop and a minimal one --------------------------------------------------------


def run_real_loop(setup: Setup, on_step: OnStep) -> dict[str, Any]:
    """``train`` as ``gdmd run`` calls it, with ``on_step`` after every step."""
    result = train(setup.parts, setup.settings, setup.accelerator, setup.run_dir, on_step=on_step)
    return {
        "critic_loss": [m["critic/loss"] for m in result.metrics],
        "student_loss": [m["student/loss"] for m in result.metrics],
        "student": {n: p.detach().clone() for n, p in setup.parts.student.named_parameters()},
        "critic": {n: p.detach().clone() for n, p in setup.parts.critic.named_parameters()},
    }


def run_minimal_loop(setup: Setup, on_step: OnStep) -> dict[str, Any]:
    """The same passes as ``train`` with a ``dmd`` target, written out by hand.

    The same random draws as the loop: at each of the loop's draw sites (critic update
    ``inner``, the student update) a :class:`~gdmd.train.randomness.SiteDraws` of the same
    seed, step and site, drawn from in the loop's order (prompts; the simulated step and the
    simulation's noise; the renoise time, then its noise), and every prompt of an update
    encoded in one call. The math is ``gdmd.losses``' (the DMD gradient, its target, the
    regression), so from the same weights it computes the same numbers bit for bit. Left out:
    metrics, checks, ``train()``/``eval()`` switches, the LR scheduler, accelerate's wrappers,
    the ``metrics.jsonl`` line and checkpoints. One process, one micro-batch (the benchmark's
    recipes).
    """
    p, s = setup.parts, setup.settings
    teacher, student, critic = p.teacher, p.student, p.critic
    teacher.requires_grad_(False)
    schedule, renoise = teacher.schedule, renoise_sampler(s.train)
    b, shape = s.train.batch_size, tuple(student.sample_shape)
    ts = torch.tensor(s.student_timesteps, dtype=torch.float32)
    clip = s.train.grad_clip if s.train.grad_clip is not None else float("inf")
    cpu, samples = torch.device("cpu"), range(b)
    opt_s = torch.optim.AdamW(
        list(student.trainable_parameters()),
        lr=s.train.student_lr,
        betas=s.train.adam_betas,
        weight_decay=s.train.weight_decay,
    )
    opt_c = torch.optim.AdamW(
        list(critic.trainable_parameters()),
        lr=s.train.critic_lr,
        betas=s.train.adam_betas,
        weight_decay=s.train.weight_decay,
    )

    def sample(draws: SiteDraws, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        i = draws.shared_index(len(ts))
        x_t = draws.noise(shape)
        with torch.no_grad():
            for j in range(i):
                x0 = student(x_t, ts[j].expand(b), cond)
                x_t = schedule.add_noise(x0, draws.noise(shape), ts[j + 1].expand(b))
        return student(x_t, ts[i].expand(b), cond)

    critic_losses, student_losses = [], []
    for step in range(s.train.steps):
        # Every draw site of the update draws its prompts; one encoder call for all of them.
        sites: list[tuple[int | str, ...]] = [
            ("critic", inner, 0) for inner in range(s.train.critic_steps)
        ]
        sites.append(("student", 0))
        draws = [SiteDraws(s.seed, step, site, samples, cpu) for site in sites]
        prompts = [d.prompts(p.prompts) for d in draws]
        with torch.no_grad():
            encoded = student.encode_prompts([q for batch in prompts for q in batch])
        conds = [
            {key: value[k * b : (k + 1) * b] for key, value in encoded.items()}
            for k in range(len(draws))
        ]
        losses = []
        for d, cond in zip(draws[:-1], conds[:-1], strict=True):
            opt_c.zero_grad(set_to_none=True)
            with torch.no_grad():
                x = sample(d, cond)
            t = d.times(renoise)
            noise = d.noise(shape)
            x_t = schedule.add_noise(x, noise, t)
            velocity = schedule.from_x0(x_t, t, critic(x_t, t, cond))
            loss = denoising_loss(velocity, schedule.training_target(x, noise, t))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(critic.trainable_parameters()), clip)
            opt_c.step()
            losses.append(float(loss.detach()))
        critic_losses.append(sum(losses) / len(losses))
        d, cond = draws[-1], conds[-1]
        opt_s.zero_grad(set_to_none=True)
        x = sample(d, cond)
        t = d.times(renoise)
        x_t = schedule.add_noise(x.detach(), d.noise(shape), t)
        with torch.no_grad():
            real = teacher(x_t, t, cond, guidance_scale=s.guidance_scale).float()
            fake = critic(x_t, t, cond).float()
        target = implicit_target(x, dmd_gradient(x, real, fake))
        loss = group_target_loss(x, target.unsqueeze(1), torch.ones(b, 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(student.trainable_parameters()), clip)
        opt_s.step()
        student_losses.append(float(loss.detach()))
        on_step(step + 1, {})
    return {
        "critic_loss": critic_losses,
        "student_loss": student_losses,
        "student": {n: q.detach().clone() for n, q in student.named_parameters()},
        "critic": {n: q.detach().clone() for n, q in critic.named_parameters()},
    }


def now() -> tuple[float, float]:
    """(wall clock, CPU time of this process), in seconds."""
    return time.perf_counter(), time.process_time()


def lockstep(
    runs: list[Callable[[OnStep], Any]],
) -> list[tuple[list[tuple[float, float]], dict[str, Any]]]:
    """Run loops in turns of one step each (A step 1, B step 1, A step 2, ...).

    Each loop runs in its own thread, but only one at a time: at the end of each step
    (``on_step``) it hands over to the next. Returns, per loop, the (wall, CPU) seconds of
    each of its steps (from taking its turn to the end of the step, so the other loops' steps
    are not counted), and what it returned with the wall seconds it ran after its last step.
    Interleaving steps rather than whole runs keeps the comparison fair on a machine whose
    load changes from second to second.
    """
    n = len(runs)
    turns = [threading.Semaphore(0) for _ in range(n)]
    durations: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    results: list[Any] = [None] * n
    tails = [0.0] * n
    errors: list[BaseException] = []
    done = [False] * n

    def hand_over(i: int) -> None:
        for k in range(1, n + 1):  # to the next loop still running (or back to this one)
            j = (i + k) % n
            if not done[j] or j == i:
                turns[j].release()
                return

    def body(i: int) -> None:
        turns[i].acquire()
        began = now()

        def on_step(step: int, metrics: dict[str, float]) -> None:
            nonlocal began
            end = now()
            durations[i].append((end[0] - began[0], end[1] - began[1]))
            hand_over(i)
            turns[i].acquire()
            began = now()

        try:
            results[i] = runs[i](on_step)
            tails[i] = now()[0] - began[0]  # after the last step: the final checkpoint
        except BaseException as error:  # re-raised by the caller
            errors.append(error)
        finally:
            done[i] = True
            if not all(done):
                hand_over(i)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    turns[0].release()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [
        (d, {"result": r, "tail_s": t}) for d, r, t in zip(durations, results, tails, strict=True)
    ]


def summarise(
    a: list[list[tuple[float, float]]],
    b: list[list[tuple[float, float]]],
    warmup: int,
    per_step: bool,
) -> dict[str, Any]:
    """ms/step of A and B after ``warmup`` steps of each run, and the ratio B/A, per clock.

    ``per_step``: the two loops did the same work at each step, so the ratio is the median of
    the step-by-step ratios; otherwise the median over runs of B's time / A's time.
    """
    out: dict[str, Any] = {}
    for clock, name in ((0, "wall"), (1, "cpu")):
        xs = [[d[clock] for d in run[warmup:]] for run in a]
        ys = [[d[clock] for d in run[warmup:]] for run in b]
        if per_step:
            ratios = [
                y / x for xr, yr in zip(xs, ys, strict=True) for x, y in zip(xr, yr, strict=True)
            ]
        else:
            ratios = [sum(yr) / sum(xr) for xr, yr in zip(xs, ys, strict=True)]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = {
            "a": 1e3 * statistics.median(statistics.fmean(r) for r in xs),
            "b": 1e3 * statistics.median(statistics.fmean(r) for r in ys),
            "ratio": statistics.median(ratios),
            "ratio_iqr": (quartiles[0], quartiles[2]),
            "a_runs": [1e3 * statistics.fmean(r) for r in xs],
            "b_runs": [1e3 * statistics.fmean(r) for r in ys],
        }
    return out


def loop_overhead(bench: Bench) -> dict[str, Any]:
    """A = the minimal loop, B = ``train``, in lockstep; each repetition has its own seed."""
    a = bench.args
    total = a.warmup + a.steps
    runs: list[list[list[tuple[float, float]]]] = [[], []]
    first: list[list[float]] = [[], []]
    tail: list[float] = []
    check: dict[int, dict[str, Any]] = {}
    for r in range(a.repeats):
        setups = [bench.build(DMD, "", total, seed=r) for _ in range(2)]
        loops = [
            functools.partial(run_minimal_loop, setups[0]),
            functools.partial(run_real_loop, setups[1]),
        ]
        order = [0, 1] if r % 2 == 0 else [1, 0]  # who goes first alternates
        measured = lockstep([loops[i] for i in order])
        for i, (durations, result) in zip(order, measured, strict=True):
            runs[i].append(durations)
            first[i].append(1e3 * durations[0][0])
            if i == 1:
                tail.append(1e3 * result["tail_s"])
            if r == 0:
                check[i] = result["result"]
    minimal, real = check[0], check[1]

    def rel(u: list[float], v: list[float]) -> float:
        return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(u, v, strict=True))

    return {
        **summarise(runs[0], runs[1], a.warmup, per_step=True),
        "first_step_ms": [statistics.median(f) for f in first],
        "final_checkpoint_ms": statistics.median(tail),
        "loss_rel_diff": max(
            rel(real["critic_loss"], minimal["critic_loss"]),
            rel(real["student_loss"], minimal["student_loss"]),
        ),
        "weight_max_diff": {
            role: max(float((real[role][n] - q).abs().max()) for n, q in minimal[role].items())
            for role in ("student", "critic")
        },
        "bitwise": all(
            real[key] == minimal[key] for key in ("critic_loss", "student_loss")
        )
        and all(
            torch.equal(real[role][n], q)
            for role in ("student", "critic")
            for n, q in minimal[role].items()
        ),
    }


# -- 2. GDMD against DMD -----------------------------------------------------------------------


class Timers:
    """Accumulated CPU time of this process per label; ``wrap`` times every call of a function.

    CPU time rather than wall time: on a shared machine the wall clock also counts the time the
    neighbours had the core, which is noise here (the phases are compared, not waited for).
    """

    def __init__(self, annotate: bool = False) -> None:
        self.total: dict[str, float] = {}
        self.annotate = annotate  # also mark each region for torch.profiler

    @contextlib.contextmanager
    def time(self, label: str) -> Iterator[None]:
        start = time.process_time()
        region = (
            torch.profiler.record_function(label) if self.annotate else contextlib.nullcontext()
        )
        try:
            with region:
                yield
        finally:
            self.total[label] = self.total.get(label, 0.0) + time.process_time() - start

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.time(label):
                return fn(*args, **kwargs)

        return timed


class _TimedDecoder:
    def __init__(self, decoder: Any, timers: Timers) -> None:
        self.decode = timers.wrap("decode", decoder.decode)


class _TimedReward:
    def __init__(self, model: Any, timers: Timers) -> None:
        self.differentiable = getattr(model, "differentiable", False)
        self._call = timers.wrap("reward", model)

    def __call__(self, images: torch.Tensor, prompts: Any) -> torch.Tensor:
        return self._call(images, prompts)


class StudentStep:
    """One student update as the loop's section 4 does it (one micro-batch), through the
    real target strategy, with hooks for timing and memory measurement."""

    def __init__(self, setup: Setup, seed: int) -> None:
        self.setup = setup
        p, s = setup.parts, setup.settings
        self.generator = torch.Generator().manual_seed(seed)
        # Backward simulation draws from its own generator, so that two strategies compared
        # step by step simulate the same number of student steps.
        self.sample_generator = torch.Generator().manual_seed(seed + 1)
        self.timesteps = torch.tensor(s.student_timesteps, dtype=torch.float32)
        self.optimizer = torch.optim.AdamW(p.student.parameters(), lr=s.train.student_lr)
        self.critic_optimizer = torch.optim.AdamW(p.critic.parameters(), lr=s.train.critic_lr)
        p.teacher.requires_grad_(False)

    def sample(self, cond: dict[str, torch.Tensor], with_grad: bool) -> torch.Tensor:
        p, s, g = self.setup.parts, self.setup.settings, self.sample_generator
        b, ts = s.train.batch_size, self.timesteps
        i = int(torch.randint(len(ts), (1,), generator=g))
        x_t = torch.randn((b, *p.student.sample_shape), generator=g)
        with torch.no_grad():
            for j in range(i):
                x0 = p.student(x_t, ts[j].expand(b), cond)
                x_t = p.teacher.schedule.add_noise(
                    x0, torch.randn(x0.shape, generator=g), ts[j + 1].expand(b)
                )
        with contextlib.nullcontext() if with_grad else torch.no_grad():
            return p.student(x_t, ts[i].expand(b), cond)

    def critic_updates(self, step: int) -> None:
        p, s, g = self.setup.parts, self.setup.settings, self.generator
        schedule = p.teacher.schedule
        for _ in range(s.train.critic_steps):
            self.critic_optimizer.zero_grad(set_to_none=True)
            cond = p.student.encode_prompts(p.prompts.sample(s.train.batch_size, g))
            x = self.sample(cond, with_grad=False)
            t = renoise_sampler(s.train).sample(s.train.batch_size, step, g)
            noise = torch.randn(x.shape, generator=g)
            x_t = schedule.add_noise(x, noise, t)
            velocity = schedule.from_x0(x_t, t, p.critic(x_t, t, cond))
            loss = (velocity - schedule.training_target(x, noise, t)).pow(2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(p.critic.parameters(), s.train.grad_clip or float("inf"))
            self.critic_optimizer.step()

    def forward(self, step: int, timers: Timers | None = None) -> torch.Tensor:
        """Sample with grad, call the target strategy, return the student loss."""
        p, s, g = self.setup.parts, self.setup.settings, self.generator
        timers = timers or Timers()
        prompts = p.prompts.sample(s.train.batch_size, g)
        cond = p.student.encode_prompts(prompts)
        with timers.time("student sample"):
            x = self.sample(cond, with_grad=True)

        def real_x0(x_t: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
            with torch.no_grad():
                return p.teacher(x_t, t, c, guidance_scale=s.guidance_scale).float()

        def fake_x0(x_t: torch.Tensor, t: torch.Tensor, c: Any, snapshot: Any) -> torch.Tensor:
            with torch.no_grad():
                return p.critic(x_t, t, c).float()

        rewards = [dataclasses.replace(r, model=_TimedReward(r.model, timers)) for r in p.rewards]
        ctx = TargetContext(
            x=x,
            prompts=prompts,
            cond_real=cond,
            cond_fake=cond,
            schedule=p.teacher.schedule,
            real_x0=timers.wrap("teacher (CFG)", real_x0),
            fake_x0=timers.wrap("critic", fake_x0),
            num_critic_snapshots=0,
            sample_t=lambda n: renoise_sampler(s.train).sample(n, step, g),
            decoder=_TimedDecoder(p.teacher.decoder, timers),
            rewards=rewards,
            generator=g,
            step=step,
        )
        with timers.time("target strategy"):
            out = p.target(ctx)
        loss = group_target_loss(x, out.targets, out.weights)
        if out.extra_loss is not None:
            loss = loss + out.extra_loss
        return loss

    def update(self, step: int, timers: Timers) -> None:
        p, s = self.setup.parts, self.setup.settings
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward(step, timers)
        with timers.time("loss backward + AdamW"):
            loss.backward()
            clip = s.train.grad_clip or float("inf")
            torch.nn.utils.clip_grad_norm_(p.student.parameters(), clip)
            self.optimizer.step()


BREAKDOWN_ROWS = [
    "critic updates",
    "student sample",
    "teacher (CFG)",
    "critic",
    "decode",
    "reward",
    "target: rest",
    "loss backward + AdamW",
]


def gdmd_cost(bench: Bench) -> dict[str, Any]:
    """A = ``dmd``, B = ``gdmd`` (K = 4, vary = "t", channel reward), both through ``train``,
    in lockstep."""
    a = bench.args
    total = a.warmup + a.steps
    runs: list[list[list[tuple[float, float]]]] = [[], []]
    for r in range(a.repeats):
        setups = [bench.build(DMD, "", total, seed=r), bench.build(GDMD, CHANNEL, total, seed=r)]
        order = [0, 1] if r % 2 == 0 else [1, 0]
        measured = lockstep([functools.partial(run_real_loop, setups[i]) for i in order])
        for i, (durations, _) in zip(order, measured, strict=True):
            runs[i].append(durations)
    timing = summarise(runs[0], runs[1], a.warmup, per_step=False)

    # Where the time goes: the phases of one update, timed in a hand-driven student step.
    steps = [bench.build(t, r, total) for t, r in ((DMD, ""), (GDMD, CHANNEL))]
    harness = [StudentStep(setup, seed=11) for setup in steps]
    phases: list[dict[str, list[float]]] = [{}, {}]
    for step in range(a.warmup + a.breakdown_steps):
        for which in (0, 1) if step % 2 == 0 else (1, 0):
            timers = Timers()
            with timers.time("critic updates"):
                harness[which].critic_updates(step)
            harness[which].update(step, timers)
            if step < a.warmup:
                continue
            inner = sum(
                timers.total.get(k, 0.0) for k in ("teacher (CFG)", "critic", "decode", "reward")
            )
            timers.total["target: rest"] = timers.total.get("target strategy", 0.0) - inner
            for label in BREAKDOWN_ROWS:
                phases[which].setdefault(label, []).append(1e3 * timers.total.get(label, 0.0))
    return {
        **timing,
        "breakdown": [
            {label: statistics.median(values) for label, values in ph.items()} for ph in phases
        ],
    }


# -- 3. peak memory of the student step ------------------------------------------------------


def _weight_storages(setup: Setup) -> set[int]:
    """Data pointers of every model weight (teacher, student, critic, rewards)."""
    modules: list[torch.nn.Module] = []
    p = setup.parts
    for m in (p.teacher, p.student, p.critic):
        if isinstance(m, torch.nn.Module):
            modules.append(m)
    for r in p.rewards:
        stack = [r.model]
        while stack:
            obj = stack.pop()
            if isinstance(obj, torch.nn.Module):
                modules.append(obj)
            elif hasattr(obj, "__dict__"):
                stack.extend(v for v in vars(obj).values() if hasattr(v, "__dict__"))
    return {
        t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]
    }


def measure_memory(setup: Setup, seed: int) -> dict[str, float]:
    """Saved-for-backward bytes and peak allocated bytes of one student step."""
    from torch.profiler import ProfilerActivity, profile

    harness = StudentStep(setup, seed)
    weights = _weight_storages(setup)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    harness.optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = harness.forward(step=0)
    loss.backward()
    saved_bytes = sum(saved.values())
    del loss

    # The same step again (same seed: same draws), under the profiler's memory accounting:
    # the CPU allocator reports every allocation and free made while profiling; the running
    # sum of those is the memory the step holds above where it started.
    harness = StudentStep(setup, seed)
    harness.optimizer.zero_grad(set_to_none=True)
    timers = Timers(annotate=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = harness.forward(step=0, timers=timers)
        with timers.time("backward"):
            loss.backward()
        del loss
    events = list(prof.profiler.kineto_results.events())  # type: ignore[union-attr]
    # A phase may run several times in a step (chunked target groups): keep every region.
    regions = [(e.name(), e.start_ns(), e.end_ns()) for e in events if e.name() in MEMORY_PHASES]
    live = peak = 0
    phase_peak = dict.fromkeys(MEMORY_PHASES, 0)
    for start_ns, nbytes in sorted(
        (e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"
    ):
        live += nbytes
        peak = max(peak, live)
        for name, lo, hi in regions:
            if lo <= start_ns <= hi:
                phase_peak[name] = max(phase_peak[name], live)
    return {
        "saved_mb": saved_bytes / 2**20,
        "peak_mb": peak / 2**20,
        **{f"peak_mb/{name}": v / 2**20 for name, v in phase_peak.items()},
    }


#: Regions of the student step whose own memory peaks are reported.
MEMORY_PHASES = ("student sample", "teacher (CFG)", "reward", "backward")


def peak_memory(bench: Bench) -> dict[str, Any]:
    a = bench.args
    reward = bench.alignment()
    chunked = f"{GDMD}\nchunk_size = {a.chunk_size or a.batch}"
    setups = {
        name: bench.build(t, reward, 1)
        for name, t in (("dmd", DMD), ("gdmd", GDMD), ("gdmd chunked", chunked), ("dmdr", DMDR))
    }
    results: dict[str, dict[str, list[float]]] = {name: {} for name in setups}
    for seed in range(min(a.repeats, 3)):  # deterministic but for the simulated step count
        for name, setup in setups.items():
            for key, value in measure_memory(setup, seed=100 + seed).items():
                results[name].setdefault(key, []).append(value)
    out: dict[str, Any] = {
        name: {key: statistics.median(v) for key, v in values.items()}
        | {f"{key}_max": max(v) for key, v in values.items()}
        for name, values in results.items()
    }
    for key in ("saved_mb", "peak_mb"):
        out[f"ratio_{key}"] = out["gdmd"][key] / out["dmdr"][key]
        out[f"ratio_chunked_{key}"] = out["gdmd chunked"][key] / out["dmdr"][key]
    return out


# -- report ------------------------------------------------------------------------------------


def report(bench: Bench, results: dict[str, Any], elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    a = bench.args
    console = Console()
    console.width = max(console.width, 120)
    console.print(
        f"[bold]gdmd engine benchmark[/]  torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s), {platform.processor() or platform.machine()}; tiny-unet "
        f"{ARCHITECTURE['image_size']}x{ARCHITECTURE['image_size']} channels "
        f"{ARCHITECTURE['channels']} ({bench.params:,} params); batch {a.batch}, "
        f"{a.critic_steps} critic updates per student update, 4 student steps, CFG 4; "
        f"{a.steps} timed steps after {a.warmup} warm-up, {a.repeats} repeats, medians"
    )

    def runs(values: list[float]) -> str:
        return " ".join(f"{v:.0f}" for v in values)

    if "overhead" in results:
        o = results["overhead"]
        w, c = o["wall"], o["cpu"]
        t = Table(title="1. loop overhead (dmd target)")
        for col in ("loop", "wall ms/step", "CPU ms/step", "wall ms/step, each run"):
            t.add_column(col, justify="left" if col == "loop" else "right")
        t.add_row("hand-written minimal", f"{w['a']:.1f}", f"{c['a']:.1f}", runs(w["a_runs"]))
        t.add_row("gdmd.train.loop.train", f"{w['b']:.1f}", f"{c['b']:.1f}", runs(w["b_runs"]))
        lo, hi = (100 * (v - 1) for v in w["ratio_iqr"])
        t.add_row(
            "overhead (median of step pairs)",
            f"{100 * (w['ratio'] - 1):+.1f}%",
            f"{100 * (c['ratio'] - 1):+.1f}%",
            f"pairs' IQR {lo:+.1f}% .. {hi:+.1f}%",
        )
        console.print(t)
        same = "bit for bit" if o["bitwise"] else "NOT bit for bit"
        console.print(
            f"  same computation ({same}): losses agree to {o['loss_rel_diff']:.1e} (relative), "
            f"student weights to {o['weight_max_diff']['student']:.1e}, critic weights to "
            f"{o['weight_max_diff']['critic']:.1e}. First step (with set-up, untimed): "
            f"{o['first_step_ms'][0]:.0f} ms minimal, {o['first_step_ms'][1]:.0f} ms train; "
            f"train's final checkpoint (once, after the last step, untimed) "
            f"{o['final_checkpoint_ms']:.0f} ms"
        )
    if "gdmd" in results:
        g = results["gdmd"]
        w, c = g["wall"], g["cpu"]
        t = Table(title="2. gdmd (K=4, vary=t, channel reward) vs dmd, through train")
        for col in ("target", "wall ms/step", "CPU ms/step", "wall ms/step, each run"):
            t.add_column(col, justify="left" if col == "target" else "right")
        t.add_row("dmd", f"{w['a']:.1f}", f"{c['a']:.1f}", runs(w["a_runs"]))
        t.add_row("gdmd", f"{w['b']:.1f}", f"{c['b']:.1f}", runs(w["b_runs"]))
        lo, hi = w["ratio_iqr"]
        t.add_row(
            "gdmd / dmd (median of run pairs)",
            f"{w['ratio']:.2f}x",
            f"{c['ratio']:.2f}x",
            f"pairs' IQR {lo:.2f}x .. {hi:.2f}x",
        )
        console.print(t)
        t = Table(title="   where an update's time goes (CPU ms, hand-driven update, medians)")
        for col in ("phase", "dmd", "gdmd", "gdmd - dmd"):
            t.add_column(col, justify="left" if col == "phase" else "right")
        dmd, gd = g["breakdown"]
        for label in BREAKDOWN_ROWS:
            x, y = dmd.get(label, 0.0), gd.get(label, 0.0)
            t.add_row(label, f"{x:.1f}", f"{y:.1f}", f"{y - x:+.1f}")
        sx, sy = sum(dmd.values()), sum(gd.values())
        t.add_row("sum", f"{sx:.1f}", f"{sy:.1f}", f"{sy - sx:+.1f} ({sy / sx:.2f}x)")
        console.print(t)
    if "memory" in results:
        m = results["memory"]
        t = Table(title="3. student step memory, MiB (toy-alignment reward, random weights)")
        cols = [
            "target",
            "saved for backward",
            "peak allocated",
            *(f"peak in {name}" for name in MEMORY_PHASES),
        ]
        for col in cols:
            t.add_column(col, justify="left" if col == "target" else "right")
        for name in ("dmd", "gdmd", "gdmd chunked", "dmdr"):
            t.add_row(
                name,
                f"{m[name]['saved_mb']:.2f}",
                f"{m[name]['peak_mb']:.2f}",
                *(f"{m[name][f'peak_mb/{p}']:.2f}" for p in MEMORY_PHASES),
            )
        for label, key in (("gdmd / dmdr", "ratio"), ("gdmd chunked / dmdr", "ratio_chunked")):
            t.add_row(
                label,
                f"{m[f'{key}_saved_mb']:.2f}",
                f"{m[f'{key}_peak_mb']:.2f}",
                *("" for _ in MEMORY_PHASES),
            )
        console.print(t)
    console.print(f"total {elapsed:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed student updates per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first updates per run")
    parser.add_argument("--batch", type=int, default=4, help="prompts per student update")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved runs of each")
    parser.add_argument("--critic-steps", type=int, default=2, help="critic updates per update")
    parser.add_argument(
        "--breakdown-steps", type=int, default=12, help="timed steps of the per-phase breakdown"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--chunk-size",
        type=int,
        help="[target] chunk_size of the chunked gdmd row of the memory part (default: --batch)",
    )
    parser.add_argument(
        "--only",
        choices=["overhead", "gdmd", "memory"],
        action="append",
        help="run only these parts (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = args.only or ["overhead", "gdmd", "memory"]
    start = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gdmd-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        if "overhead" in parts:
            results["overhead"] = loop_overhead(bench)
        if "gdmd" in parts:
            results["gdmd"] = gdmd_cost(bench)
        if "memory" in parts:
            results["memory"] = peak_memory(bench)
        report(bench, results, time.perf_counter() - start)
    if args.json is not None:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "params": bench.params,
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        args.json.write_text(json.dumps({"meta": meta, **results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
