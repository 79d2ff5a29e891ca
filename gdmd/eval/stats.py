"""Means and paired differences of per-image scores, with bootstrap confidence intervals.

Scores are keyed by ``(prompt, seed)``: every model of a comparison generates one image per
prompt and seed, so two models' images of the same key share their prompt and their initial
noise, and the difference of their scores is a *paired* difference, much less noisy than the
difference of two independent means.

Intervals are percentile bootstrap intervals (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13) that resample **prompts**, not images: the images of one prompt (its
seeds) are not independent draws, since a hard prompt is hard for every seed, and an interval
that resampled images would be too narrow. Each resample draws as many prompts as there are,
with replacement, and takes the mean over all images of the drawn prompts. The resampling is
seeded, so the same scores always give the same interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from gdmd.errors import GdmdError

__all__ = [
    "ALL",
    "Interval",
    "ScoreKey",
    "StatsError",
    "bootstrap_interval",
    "model_means",
    "paired_difference",
    "paired_differences",
]

#: A score's key: the prompt and the seed of the image it scores.
ScoreKey = tuple[str, int]
#: The group name of "every prompt" in the per-category tables.
ALL = "all"
#: Resamples drawn at once (bounds the memory of the index matrix).
_CHUNK = 1000


class StatsError(GdmdError):
    """Scores that cannot be summarised: empty, non-finite, or not paired."""

    exit_code = 2


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap confidence interval ``[low, high]`` at ``level``."""

    mean: float
    low: float
    high: float
    level: float
    num_prompts: int
    num_images: int

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in ``[low, high]``."""
        return self.low <= value <= self.high

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0 (the difference is resolved)."""
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 4) -> str:
        """``mean [low, high]`` with ``digits`` significant digits."""
        return f"{self.mean:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def _per_prompt(scores: Mapping[ScoreKey, float], who: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt sums and image counts, prompts in first-seen order."""
    if not scores:
        raise StatsError(f"{who}: no scores to summarise")
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for (prompt, _seed), value in scores.items():
        value = float(value)
        if not np.isfinite(value):
            raise StatsError(f"{who}: the score of prompt {prompt!r} is {value}")
        sums[prompt] = sums.get(prompt, 0.0) + value
        counts[prompt] = counts.get(prompt, 0) + 1
    return np.array(list(sums.values())), np.array(list(counts.values()), dtype=np.float64)


def bootstrap_interval(
    scores: Mapping[ScoreKey, float],
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    who: str = "scores",
) -> Interval:
    """The mean of ``scores`` with a percentile bootstrap interval that resamples prompts.

    ``mean`` is the mean over every image. Each of ``resamples`` draws picks as many prompts
    as there are, with replacement (``numpy.random.default_rng(seed)``), and computes
    ``sum of their scores / number of their images``; ``low`` and ``high`` are the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those means. With a single
    prompt the interval is the point ``[mean, mean]``: there is nothing to resample.
    """
    if not 0 < level < 1:
        raise StatsError(f"{who}: level must be in (0, 1), got {level}")
    if resamples < 1:
        raise StatsError(f"{who}: resamples must be at least 1, got {resamples}")
    sums, counts = _per_prompt(scores, who)
    mean = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    prompts = len(sums)
    means = []
    for start in range(0, resamples, _CHUNK):
        draws = rng.integers(0, prompts, size=(min(_CHUNK, resamples - start), prompts))
        means.append(sums[draws].sum(axis=1) / counts[draws].sum(axis=1))
    low, high = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    # Rounding can put a quantile of identical means a hair off the mean; the interval of a
    # constant is the point itself.
    low, high = min(float(low), mean), max(float(high), mean)
    return Interval(mean, low, high, level, prompts, int(counts.sum()))


def paired_difference(
    scores_a: Mapping[ScoreKey, float],
    scores_b: Mapping[ScoreKey, float],
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    who: str = "a - b",
) -> Interval:
    """``a - b`` per ``(prompt, seed)``, summarised by :func:`bootstrap_interval`.

    Both must score exactly the same keys (the same prompts and seeds); otherwise the
    difference would not be paired, and a :class:`StatsError` names the keys one side lacks.
    """
    only_a = set(scores_a) - set(scores_b)
    only_b = set(scores_b) - set(scores_a)
    if only_a or only_b:
        parts = [
            f"{len(keys)} (prompt, seed) pair(s) only in {side}, e.g. {sorted(keys)[:3]}"
            for side, keys in (("the first", only_a), ("the second", only_b))
            if keys
        ]
        raise StatsError(f"{who}: the scores are not paired: " + "; ".join(parts))
    differences = {key: float(scores_a[key]) - float(scores_b[key]) for key in scores_a}
    return bootstrap_interval(
        differences, level=level, resamples=resamples, seed=seed, who=who
    )


def _groups(
    keys: Sequence[ScoreKey], categories: Mapping[str, str | None] | None
) -> dict[str, list[ScoreKey]]:
    groups: dict[str, list[ScoreKey]] = {ALL: list(keys)}
    if categories is None:
        return groups
    for key in keys:
        category = categories.get(key[0])
        if category is not None:
            groups.setdefault(category, []).append(key)
    return groups


def model_means(
    models: Mapping[str, Mapping[ScoreKey, float]],
    categories: Mapping[str, str | None] | None = None,
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, dict[str, Interval]]:
    """``{model: {group: Interval}}``: each model's mean over every prompt (group
    :data:`ALL`) and over the prompts of each category (``categories`` maps a prompt to its
    category; prompts it lacks, or maps to ``None``, count only in :data:`ALL`)."""
    table: dict[str, dict[str, Interval]] = {}
    for name, scores in models.items():
        groups = _groups(list(scores), categories)
        table[name] = {
            group: bootstrap_interval(
                {k: scores[k] for k in keys},
                level=level,
                resamples=resamples,
                seed=seed,
                who=f"{name} ({group})",
            )
            for group, keys in groups.items()
        }
    return table


def paired_differences(
    models: Mapping[str, Mapping[ScoreKey, float]],
    pairs: Sequence[tuple[str, str]],
    categories: Mapping[str, str | None] | None = None,
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, dict[str, Interval]]:
    """``{"a - b": {group: Interval}}`` for each ``(a, b)`` of ``pairs``: the paired
    difference over every prompt (:data:`ALL`) and within each category."""
    table: dict[str, dict[str, Interval]] = {}
    for a, b in pairs:
        for name in (a, b):
            if name not in models:
                raise StatsError(
                    f"no scores for model {name!r}; models scored: {', '.join(models)}"
                )
        label = f"{a} - {b}"
        difference = partial(paired_difference, level=level, resamples=resamples, seed=seed)
        # Over every prompt first: this refuses unpaired scores before any category is cut.
        row = {ALL: difference(models[a], models[b], who=f"{label} ({ALL})")}
        for group, keys in _groups(list(models[a]), categories).items():
            if group != ALL:
                row[group] = difference(
                    {k: models[a][k] for k in keys},
                    {k: models[b][k] for k in keys},
                    who=f"{label} ({group})",
                )
        table[label] = row
    return table
