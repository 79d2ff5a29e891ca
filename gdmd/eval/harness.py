"""Sampling and evaluating finished runs: what ``gdmd sample`` and ``gdmd eval`` do.

A run is opened by :meth:`gdmd.run.rundir.RunDir.open` (rebuilt from its ``resolved.toml``,
the student's weights from its newest checkpoint, on its device and in its dtype); this module
only samples and measures, so any model family works without family-specific code here.
Tables and files of results are :mod:`gdmd.eval.report`'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from gdmd.errors import GdmdError

if TYPE_CHECKING:
    from gdmd.run.rundir import OpenedRun


def generate(
    run: OpenedRun,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    model: str = "student",
    steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Images ``[len(prompts), 3, H, W]`` in ``[0, 1]``; image ``i`` uses seed ``seeds[i]``.

    The student samples at its trained timesteps (or ``steps`` evenly spaced ones) with the
    few-step sampler; the teacher with the deterministic Euler sampler, ``steps`` (default 50)
    steps and its recipe CFG scale unless ``guidance_scale`` is given. Models compute under
    autocast in ``run.dtype`` when it is not float32, as mixed-precision training did; the
    starting noise is drawn on the CPU in float32, so it is the same on every device.
    """
    from gdmd.sampling import consistency_sample, default_timesteps, euler_sample

    if model not in ("student", "teacher"):
        raise GdmdError(f"model must be 'student' or 'teacher', got {model!r}")
    net = run.student if model == "student" else run.teacher
    device = next(net.parameters()).device  # type: ignore[attr-defined]
    if model == "student":
        times = (
            run.student_timesteps
            if steps is None
            else default_timesteps(steps, net.schedule).tolist()
        )
    else:
        times = default_timesteps(steps or 50, net.schedule).tolist()
        if guidance_scale is None:
            guidance_scale = run.recipe.teacher.guidance_scale
    autocast = torch.autocast(device.type, dtype=run.dtype, enabled=run.dtype != torch.float32)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        chunk_seeds = seeds[start : start + batch_size]
        noise = torch.stack(
            [
                torch.randn(net.sample_shape, generator=torch.Generator().manual_seed(int(s)))
                for s in chunk_seeds
            ]
        ).to(device)
        with torch.no_grad(), autocast:
            cond = {k: v.to(device) for k, v in net.encode_prompts(chunk).items()}
            if model == "student":
                generator = torch.Generator().manual_seed(int(chunk_seeds[0]) * 7919 + 1)
                x0 = consistency_sample(net, cond, noise, times, generator)
            else:
                x0 = euler_sample(net, cond, noise, times, guidance_scale)
            out.append(run.teacher.decoder.decode(x0).float().clamp(0, 1).cpu())
    return torch.cat(out)


@dataclass
class EvalResult:
    """One evaluated model: a row of the comparison table."""

    label: str
    run_dir: str
    model: str
    steps: int
    num_images: int
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "run_dir": self.run_dir,
            "model": self.model,
            "steps": self.steps,
            "num_images": self.num_images,
            "metrics": self.metrics,
        }


def evaluation_prompts(run: OpenedRun) -> list[str]:
    """The recipe's ``[eval] prompts_file`` lines, else the prompt source's held-out list."""
    path = run.recipe.eval.prompts_file
    if path:
        from gdmd.builtins.prompts import read_prompt_file

        return read_prompt_file(path)
    prompts = list(run.prompts.evaluation_prompts())
    if not prompts:
        raise GdmdError(
            f"{run.run_dir}: no evaluation prompts: set [eval] prompts_file or use a prompt "
            "source with evaluation prompts"
        )
    return prompts


def evaluate(
    run: OpenedRun,
    *,
    model: str = "student",
    steps: int | None = None,
    seeds: Sequence[int] | None = None,
    num_images: int | None = None,
    label: str | None = None,
    batch_size: int | None = None,
) -> tuple[EvalResult, torch.Tensor, list[str]]:
    """Generate for the evaluation prompts (each seed once) and measure.

    Metrics: every recipe reward's mean; the prompt source's own metrics when it has an
    ``evaluate(images, prompts)`` method (the toy domain: checker accuracy per category, FD,
    diversity); and sampling throughput (``images_per_s``). ``batch_size`` defaults to the
    recipe's ``[eval] batch_size``.
    """
    base = evaluation_prompts(run)
    seeds = list(seeds if seeds is not None else run.recipe.eval.seeds)
    prompts = [p for _ in seeds for p in base]
    image_seeds = [s * 100_003 + i for s in seeds for i in range(len(base))]
    limit = num_images or run.recipe.eval.num_images * len(seeds)
    prompts, image_seeds = prompts[:limit], image_seeds[:limit]
    start = time.perf_counter()
    images = generate(
        run,
        prompts,
        image_seeds,
        model=model,
        steps=steps,
        batch_size=batch_size or run.recipe.eval.batch_size,
    )
    elapsed = time.perf_counter() - start
    metrics: dict[str, float] = {}
    own = getattr(run.prompts, "evaluate", None)
    if callable(own):
        metrics.update(own(images, prompts))
    from gdmd.contracts import call_reward

    for reward in run.rewards:
        with torch.no_grad():
            scores = torch.cat(
                [
                    call_reward(reward, images[i : i + 256], prompts[i : i + 256])
                    for i in range(0, len(prompts), 256)
                ]
            )
        metrics[f"reward/{reward.label}"] = float(scores.mean())
    metrics["images_per_s"] = len(prompts) / max(elapsed, 1e-9)
    used_steps = (
        len(run.student_timesteps) if model == "student" and steps is None else (steps or 50)
    )
    name = label or (
        f"{run.run_dir.name}" if model == "student" else f"teacher ({used_steps} steps)"
    )
    result = EvalResult(
        label=name,
        run_dir=str(run.run_dir),
        model=model,
        steps=used_steps,
        num_images=len(prompts),
        metrics=metrics,
    )
    return result, images, prompts
