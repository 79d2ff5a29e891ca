"""Bootstrap means and paired differences against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from gdmd.eval.stats import (
    ALL,
    StatsError,
    bootstrap_interval,
    model_means,
    paired_difference,
    paired_differences,
)


def _scores(values_per_prompt):
    """``{(prompt, seed): value}`` from ``{prompt: [value per seed]}``."""
    return {(p, s): v for p, values in values_per_prompt.items() for s, v in enumerate(values)}


def test_a_constant_difference_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    b = {(f"p{i}", s): float(rng.normal()) for i in range(30) for s in range(3)}
    a = {k: v + 0.25 for k, v in b.items()}
    diff = paired_difference(a, b)
    assert diff.mean == pytest.approx(0.25)
    assert diff.low == pytest.approx(0.25) and diff.high == pytest.approx(0.25)
    assert diff.excludes_zero and diff.num_prompts == 30 and diff.num_images == 90


def test_two_prompts_by_hand():
    # Prompt A: two images scoring 1; prompt B: one image scoring 4. Mean over images 6/3 = 2.
    # A resample of two prompts is AA (mean 1), AB or BA (6/3 = 2) or BB (4), with
    # probabilities 1/4, 1/2, 1/4: the 95 % interval runs from 1 to 4.
    scores = _scores({"A": [1.0, 1.0], "B": [4.0]})
    interval = bootstrap_interval(scores, resamples=4000)
    assert interval.mean == pytest.approx(2.0)
    assert (interval.low, interval.high) == (pytest.approx(1.0), pytest.approx(4.0))
    # The 50 % interval (quantiles 0.25 and 0.75) lies within the AB/BA mass.
    narrow = bootstrap_interval(scores, resamples=4000, level=0.4)
    assert (narrow.low, narrow.high) == (pytest.approx(2.0), pytest.approx(2.0))


def test_the_interval_covers_the_true_mean_at_about_its_level():
    # 200 experiments of 40 prompts drawn from N(1, 2^2): a 95 % interval should miss the
    # true mean about 5 % of the time (the percentile bootstrap runs a little narrow at n = 40).
    rng = np.random.default_rng(1)
    covered = 0
    widths = []
    for experiment in range(200):
        values = rng.normal(1.0, 2.0, size=40)
        interval = bootstrap_interval(
            {(f"p{i}", 0): float(v) for i, v in enumerate(values)},
            resamples=1000,
            seed=experiment,
        )
        covered += interval.contains(1.0)
        widths.append(interval.high - interval.low)
    assert 0.88 <= covered / 200 <= 0.99
    # The normal-theory width is 2 * 1.96 * 2 / sqrt(40) = 1.24.
    assert np.mean(widths) == pytest.approx(1.24, rel=0.1)


def test_prompts_are_resampled_not_images():
    # Ten seeds of each prompt share the prompt's effect (sd 1) and differ by little (sd 0.01):
    # there are 20 independent values, not 200, and the interval must be as wide as that says.
    rng = np.random.default_rng(2)
    effects = rng.normal(0.0, 1.0, size=20)
    scores = {
        (f"p{i}", s): float(effects[i] + rng.normal(0.0, 0.01))
        for i in range(20)
        for s in range(10)
    }
    interval = bootstrap_interval(scores)
    width_if_prompts = 2 * 1.96 * effects.std() / np.sqrt(20)
    assert interval.high - interval.low == pytest.approx(width_if_prompts, rel=0.2)


def test_resampling_is_seeded():
    rng = np.random.default_rng(3)
    scores = {(f"p{i}", 0): float(rng.normal()) for i in range(25)}
    assert bootstrap_interval(scores, seed=7) == bootstrap_interval(scores, seed=7)
    assert bootstrap_interval(scores, seed=7) != bootstrap_interval(scores, seed=8)


def test_unpaired_scores_are_refused_naming_the_pairs():
    a = _scores({"a cat": [1.0, 2.0], "a dog": [3.0]})
    b = _scores({"a cat": [1.0], "a dog": [3.0], "a cow": [0.0]})
    with pytest.raises(StatsError) as err:
        paired_difference(a, b, who="student - teacher")
    message = str(err.value)
    assert message.startswith("student - teacher: the scores are not paired")
    assert "1 (prompt, seed) pair(s) only in the first, e.g. [('a cat', 1)]" in message
    assert "1 (prompt, seed) pair(s) only in the second, e.g. [('a cow', 0)]" in message


def test_bad_scores_and_options_are_refused():
    with pytest.raises(StatsError, match="no scores"):
        bootstrap_interval({})
    with pytest.raises(StatsError, match=r"the score of prompt 'x' is nan"):
        bootstrap_interval({("x", 0): float("nan")})
    with pytest.raises(StatsError, match=r"level must be in \(0, 1\)"):
        bootstrap_interval({("x", 0): 1.0}, level=95)


def test_means_and_differences_per_category():
    categories = {"red cup": "colors", "blue car": "colors", "two dogs": "counting"}
    teacher = _scores({"red cup": [0.5, 0.7], "blue car": [0.2, 0.4], "two dogs": [0.0, 1.0]})
    student = {k: v + (0.1 if categories[k[0]] == "colors" else -0.5) for k, v in teacher.items()}
    models = {"teacher": teacher, "student": student}
    means = model_means(models, categories, resamples=500)
    assert set(means["teacher"]) == {ALL, "colors", "counting"}
    assert means["teacher"][ALL].mean == pytest.approx(2.8 / 6)
    assert means["teacher"]["colors"].mean == pytest.approx(0.45)
    assert means["student"]["counting"].mean == pytest.approx(0.0)
    assert means["teacher"]["counting"].num_prompts == 1
    diffs = paired_differences(models, [("student", "teacher")], categories, resamples=500)
    row = diffs["student - teacher"]
    assert row["colors"].mean == pytest.approx(0.1) and row["colors"].high == pytest.approx(0.1)
    assert row["counting"].mean == pytest.approx(-0.5)
    assert row[ALL].mean == pytest.approx((4 * 0.1 - 2 * 0.5) / 6)
    assert row[ALL].low == pytest.approx(-0.5) and row[ALL].high == pytest.approx(0.1)
    with pytest.raises(StatsError, match="no scores for model 'dmd'; models scored: teacher"):
        paired_differences(models, [("dmd", "teacher")])


def test_format():
    interval = bootstrap_interval({("a", 0): 0.123456, ("b", 0): 0.123456})
    assert interval.format(3) == "0.123 [0.123, 0.123]"
