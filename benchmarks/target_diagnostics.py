"""What GDMD's reward sees: scoring variants and group layouts measured on a finished run.

    python benchmarks/target_diagnostics.py RUN_DIR [--samples 128] [--k 8] [--seed 0]
                                            [--prompts training|validation] [--json PATH]
                                            [--group targets|samples]

Rebuilds a toy run directory (teacher, the trained student and critic of its newest
checkpoint, its rewards and prompts), draws ``--samples`` prompts and 4-step student samples,
and builds ``--k`` DMD targets per sample exactly as the ``gdmd`` target does
(:func:`gdmd.targets.common.target_group`, renoise times from ``[train] renoise_range``), for
each group layout (``group_t``: independent, shared, stratified; every layout gets the same
noise). Each scored tensor is decoded and given to the run's first reward and to the exact
checker:

- ``sample``: the student's sample itself (what reward-weighted DMD and DMDR score);
- ``x - g``: the implicit target (``scored = "normalised"``, ``score_step = 1``, the default);
- ``x - 0.25 g``: a shorter step (``score_step = 0.25``);
- ``x - (x0_fake - x0_real)``: the direction before DMD's normaliser (``scored =
  "unnormalised"``).

With ``--group samples`` the group is GDMD's ``group = "samples"`` instead: ``--samples``
prompts, ``--k`` student samples of each (different initial noise), one DMD target per
sample (:func:`gdmd.targets.common.sample_group`, the layout now spreading renoise times over
a prompt's samples), and every statistic "in group" is taken over a prompt's ``K`` samples;
the raw samples are a row of their own (``sample``), comparable in group with the others.

Printed per row: mean reward; checker accuracy (plain fraction of images); ``R2(t)``, the
fraction of within-group reward variance a straight line in ``t`` explains (pooled over groups
after removing each group's mean reward and mean time); ``rho(t, r)``, the mean within-group
Spearman correlation of time and reward; ``sd(r)``, the mean within-group reward standard
deviation; ``AUC``, the probability that a checker-correct image of the row outscores an
incorrect one; ``AUC in group``, the same over pairs of one group only (what a group-relative
advantage can use: 0.5 means the group's ranking says nothing about the checker), with the
number of such pairs. Brackets: 95 % bootstrap intervals over samples (1,000 resamples).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdmd.interfaces import TargetContext
from gdmd.manager import build_plugin_manager
from gdmd.targets.common import sample_group, target_group

LAYOUTS = ("independent", "shared", "stratified")


def load_parts(run_dir: Path, checkpoint: Path | None = None) -> tuple[Any, Any]:
    """``(recipe, components)`` of a run, with the student and critic of a checkpoint."""
    from gdmd.run.build import build_components
    from gdmd.run.rundir import RunDir
    from gdmd.train.checkpoint import load_checkpoint

    # The critic too (RunDir.open never builds it): the instrument recomputes DMD targets.
    run = RunDir.existing(run_dir)
    recipe = run.recipe(build_plugin_manager())
    parts = build_components(recipe, None)
    checkpoint = checkpoint or run.latest_checkpoint()
    if checkpoint is None:
        raise SystemExit(f"{run_dir} has no complete checkpoint")
    tensors, _ = load_checkpoint(checkpoint)
    parts.student.load_state_dict(tensors.get("ema", tensors["student"]), strict=False)
    parts.critic.load_state_dict(tensors["critic"], strict=False)
    for model in (parts.teacher, parts.student, parts.critic):
        model.eval()
        model.requires_grad_(False)
    return recipe, parts


def pick_prompts(parts: Any, n: int, split: str, generator: torch.Generator) -> list[str]:
    if split == "training":
        return parts.prompts.sample(n, generator)
    from gdmd.toy.grammar import validation_prompts

    pool = validation_prompts()
    picks = torch.randint(len(pool), (n,), generator=generator).tolist()
    return [pool[i] for i in picks]


def student_samples(recipe: Any, parts: Any, prompts: list[str], seed: int) -> torch.Tensor:
    from gdmd.run.build import student_timesteps
    from gdmd.sampling import consistency_sample

    student = parts.student
    times = student_timesteps(recipe, parts.teacher.schedule)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), *student.sample_shape, generator=g)
    with torch.no_grad():
        cond = student.encode_prompts(prompts)
        return consistency_sample(student, cond, noise, times, g)


def _context(
    recipe: Any, parts: Any, x: torch.Tensor, prompts: list[str], seed: int
) -> TargetContext:
    """A target context on the run's teacher and critic, its draws seeded by ``seed``."""
    low, high = recipe.train.renoise_range
    time_gen = torch.Generator().manual_seed(seed * 1_000 + 1)
    noise_gen = torch.Generator().manual_seed(seed * 1_000 + 2)  # same noise for every layout
    teacher, critic = parts.teacher, parts.critic
    guidance = recipe.teacher.guidance_scale
    cond = teacher.encode_prompts(prompts)
    return TargetContext(
        x=x,
        prompts=prompts,
        cond_real=cond,
        cond_fake=cond,
        schedule=teacher.schedule,
        real_x0=lambda x_t, t, c: teacher(x_t, t, c, guidance_scale=guidance).float(),
        fake_x0=lambda x_t, t, c, snapshot: critic(x_t, t, c).float(),
        num_critic_snapshots=0,
        sample_t=lambda n: low + (high - low) * torch.rand(n, generator=time_gen),
        decoder=parts.teacher.decoder,
        rewards=parts.rewards,
        generator=time_gen,
        step=0,
        sample_noise=lambda n: torch.randn(n, *x.shape[1:], generator=noise_gen),
        renoise_range=(low, high),
    )


def scored_images(
    recipe: Any, parts: Any, x: torch.Tensor, prompts: list[str], k: int, seed: int, layout: str
) -> dict[str, Any]:
    """Decoded images ``[B, K, 3, H, W]`` of every scoring variant, and the times ``[B, K]``."""
    decode = parts.teacher.decoder.decode
    ctx = _context(recipe, parts, x, prompts, seed)
    with torch.no_grad():
        group = target_group(ctx, k, times=layout, shared_noise=False, vary_fake=False)
        xk = x.unsqueeze(1).float()
        tensors = {
            "x - g": xk - group.gradients,
            "x - 0.25 g": xk - 0.25 * group.gradients,
            "x - (x0_fake - x0_real)": xk - group.directions,
        }
        b = x.shape[0]
        images = {
            name: decode(value.reshape(b * k, *x.shape[1:]))
            .clamp(0, 1)
            .reshape(b, k, 3, *value.shape[-2:])
            for name, value in tensors.items()
        }
    return {
        "images": images,
        "times": group.times.numpy(),
        "grad_abs": float(group.gradients.abs().mean()),
        "direction_abs": float(group.directions.abs().mean()),
    }


def sample_group_images(
    recipe: Any, parts: Any, x: torch.Tensor, prompts: list[str], k: int, seed: int, layout: str
) -> dict[str, Any]:
    """For ``x`` ``[P * K, ...]`` (prompt ``i``'s samples in rows ``i*K .. i*K + K-1``), the
    decoded images ``[P, K, 3, H, W]`` of the raw samples and of every scoring variant of each
    sample's own DMD target, and the times ``[P, K]``."""
    decode = parts.teacher.decoder.decode
    ctx = _context(recipe, parts, x, prompts, seed)
    with torch.no_grad():
        group = sample_group(ctx, k, layout)
        x1 = x.float()
        gradients, directions = group.gradients[:, 0], group.directions[:, 0]
        tensors = {
            "sample": x1,
            "x - g": x1 - gradients,
            "x - 0.25 g": x1 - 0.25 * gradients,
            "x - (x0_fake - x0_real)": x1 - directions,
        }
        p = x.shape[0] // k
        images = {
            name: decode(value).clamp(0, 1).reshape(p, k, 3, *value.shape[-2:])
            for name, value in tensors.items()
        }
    return {
        "images": images,
        "times": group.times.reshape(p, k).numpy(),
        "grad_abs": float(group.gradients.abs().mean()),
        "direction_abs": float(group.directions.abs().mean()),
    }


def judge(parts: Any, images: torch.Tensor, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reward and checker verdict of ``[B, K, 3, H, W]`` images, each ``[B, K]``."""
    from gdmd.contracts import call_reward
    from gdmd.toy.checker import check_batch

    b, k = images.shape[:2]
    flat = images.reshape(b * k, *images.shape[2:])
    repeated = [p for p in prompts for _ in range(k)]
    reward = parts.rewards[0]
    with torch.no_grad():
        scores = torch.cat(
            [
                call_reward(reward, flat[i : i + 256], repeated[i : i + 256])
                for i in range(0, len(flat), 256)
            ]
        )
    verdicts = np.array(check_batch(flat, repeated), dtype=bool)
    return scores.numpy().reshape(b, k), verdicts.reshape(b, k)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (ties broken by order; rewards are continuous)."""
    return values.argsort(axis=-1).argsort(axis=-1).astype(float)


def within_r2(r: np.ndarray, t: np.ndarray) -> float:
    if np.all(t == t[:, :1]):
        return float("nan")  # one time per group: there is nothing for t to explain
    rc, tc = r - r.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    if (rc**2).sum() == 0:
        return float("nan")
    spread = (tc**2).sum()
    return float((rc * tc).sum() ** 2 / (spread * (rc**2).sum()))


def within_spearman(r: np.ndarray, t: np.ndarray) -> float:
    if np.all(t == t[:, :1]):
        return float("nan")
    rr, tr = _ranks(r), _ranks(t)
    rr, tr = rr - rr.mean(1, keepdims=True), tr - tr.mean(1, keepdims=True)
    denom = np.sqrt((rr**2).sum(1) * (tr**2).sum(1))
    return float(np.mean((rr * tr).sum(1) / denom))


def auc(r: np.ndarray, ok: np.ndarray) -> float:
    """P(reward of a correct image > reward of an incorrect one), ties counting half."""
    pos, neg = r[ok], r[~ok]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def within_auc(r: np.ndarray, ok: np.ndarray) -> tuple[float, int]:
    """:func:`auc` over the pairs of one group with different verdicts, and their number."""
    wins = pairs = 0.0
    for row_r, row_ok in zip(r, ok, strict=True):
        if row_ok.all() or not row_ok.any():
            continue
        diff = row_r[row_ok][:, None] - row_r[~row_ok][None, :]
        wins += float(((diff > 0) + 0.5 * (diff == 0)).sum())
        pairs += diff.size
    return (wins / pairs if pairs else float("nan")), int(pairs)


STATS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "reward": lambda r, ok, t: float(r.mean()),
    "accuracy": lambda r, ok, t: float(ok.mean()),
    "r2_t": lambda r, ok, t: within_r2(r, t),
    "spearman_t": lambda r, ok, t: within_spearman(r, t),
    "sd_in_group": lambda r, ok, t: float(r.std(1).mean()),
    "auc": lambda r, ok, t: auc(r.reshape(-1), ok.reshape(-1)),
    "auc_in_group": lambda r, ok, t: within_auc(r, ok)[0],
}


def describe(
    r: np.ndarray, ok: np.ndarray, t: np.ndarray, rng: np.random.Generator, resamples: int
) -> dict[str, Any]:
    """Every statistic of one row, with 95 % bootstrap intervals over samples (groups)."""
    out: dict[str, Any] = {name: fn(r, ok, t) for name, fn in STATS.items()}
    out["pairs_in_group"] = within_auc(r, ok)[1]
    draws = {name: [] for name in STATS}
    for _ in range(resamples):
        idx = rng.integers(0, len(r), len(r))
        for name, fn in STATS.items():
            draws[name].append(fn(r[idx], ok[idx], t[idx]))
    for name, values in draws.items():
        finite = np.asarray(values, dtype=float)
        finite = finite[np.isfinite(finite)]
        out[f"{name}_ci"] = (
            [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]
            if len(finite)
            else None
        )
    return out


def diagnose(
    run_dir: Path,
    samples: int,
    k: int,
    seed: int,
    split: str,
    resamples: int = 1000,
    group: str = "targets",
) -> dict[str, Any]:
    recipe, parts = load_parts(run_dir)
    g = torch.Generator().manual_seed(seed)
    prompts = pick_prompts(parts, samples, split, g)
    if group == "samples":
        rows, scale = diagnose_sample_group(recipe, parts, prompts, k, seed, resamples)
        return _result(run_dir, recipe, parts, samples, k, seed, split, "samples", scale, rows)
    x = student_samples(recipe, parts, prompts, seed)
    rng = np.random.default_rng(seed)
    decoded = parts.teacher.decoder.decode(x).clamp(0, 1).unsqueeze(1)
    r, ok = judge(parts, decoded, prompts)
    rows: list[dict[str, Any]] = [
        {"layout": "-", "scored": "sample", **describe(r, ok, np.zeros_like(r), rng, resamples)}
    ]
    scale: dict[str, float] = {}
    for layout in LAYOUTS:
        built = scored_images(recipe, parts, x, prompts, k, seed, layout)
        scale[layout] = {
            "mean |g|": built["grad_abs"],
            "mean |x0_fake - x0_real|": built["direction_abs"],
        }
        for name, images in built["images"].items():
            r, ok = judge(parts, images, prompts)
            rows.append(
                {
                    "layout": layout,
                    "scored": name,
                    **describe(r, ok, built["times"], rng, resamples),
                }
            )
    return _result(run_dir, recipe, parts, samples, k, seed, split, "targets", scale, rows)


def diagnose_sample_group(
    recipe: Any, parts: Any, prompts: list[str], k: int, seed: int, resamples: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Rows of GDMD's group of samples: ``k`` student samples of each prompt, one DMD target
    each, every statistic in group taken over a prompt's samples; per layout of the times."""
    repeated = [p for p in prompts for _ in range(k)]
    x = student_samples(recipe, parts, repeated, seed)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    scale: dict[str, dict[str, float]] = {}
    for layout in LAYOUTS:
        built = sample_group_images(recipe, parts, x, repeated, k, seed, layout)
        scale[layout] = {
            "mean |g|": built["grad_abs"],
            "mean |x0_fake - x0_real|": built["direction_abs"],
        }
        for name, images in built["images"].items():
            if name == "sample" and rows:
                continue  # the raw samples do not depend on the layout
            r, ok = judge(parts, images, prompts)
            times = np.zeros_like(r) if name == "sample" else built["times"]
            rows.append(
                {
                    "layout": "-" if name == "sample" else layout,
                    "scored": name,
                    **describe(r, ok, times, rng, resamples),
                }
            )
    return rows, scale


def _result(
    run_dir: Path,
    recipe: Any,
    parts: Any,
    samples: int,
    k: int,
    seed: int,
    split: str,
    group: str,
    scale: dict[str, Any],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "target": recipe.target.kind,
        "reward": parts.rewards[0].label,
        "group": group,
        "samples": samples,
        "k": k,
        "seed": seed,
        "prompts": split,
        "renoise_range": list(recipe.train.renoise_range),
        "scale": scale,
        "rows": rows,
    }


def _cell(row: dict[str, Any], name: str, digits: int) -> str:
    value = row[name]
    if value != value:  # nan
        return "-"
    ci = row.get(f"{name}_ci")
    text = f"{value:.{digits}f}"
    if ci is None:
        return text
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def markdown(result: dict[str, Any]) -> str:
    each = "samples (one target each)" if result["group"] == "samples" else "targets"
    lines = [
        f"{result['run_dir']} ({result['target']}): {result['samples']} {result['prompts']} "
        f"prompts x {result['k']} {each}, t uniform on {result['renoise_range']}, "
        f"reward {result['reward']!r}, seed {result['seed']}",
        "",
        "| group_t | scored | reward | accuracy | R2(t) | rho(t, r) | sd(r) in group | AUC "
        "| AUC in group (pairs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['layout']} | {row['scored']} | {_cell(row, 'reward', 1)} "
            f"| {_cell(row, 'accuracy', 3)} | {_cell(row, 'r2_t', 2)} "
            f"| {_cell(row, 'spearman_t', 2)} | {row['sd_in_group']:.2f} "
            f"| {_cell(row, 'auc', 2)} | {_cell(row, 'auc_in_group', 2)} "
            f"({row['pairs_in_group']}) |"
        )
    lines.append("")
    for layout, values in result["scale"].items():
        parts = ", ".join(f"{name} = {value:.3f}" for name, value in values.items())
        lines.append(f"- {layout}: {parts}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", choices=("training", "validation"), default="training")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument(
        "--group",
        choices=("targets", "samples"),
        default="targets",
        help='"targets": K targets of one sample; "samples": K samples of one prompt, one '
        "target each (GDMD's group = \"samples\")",
    )
    args = parser.parse_args()
    result = diagnose(
        args.run_dir,
        args.samples,
        args.k,
        args.seed,
        args.prompts,
        args.resamples,
        group=args.group,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(markdown(result))


if __name__ == "__main__":
    main()
