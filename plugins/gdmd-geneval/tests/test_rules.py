"""GenEval's rules on hand-made detections: every task, correct and incorrect."""

from __future__ import annotations

import pytest

from gdmd_geneval.rules import (
    Detection,
    GenEvalSpecError,
    PromptSpec,
    Rules,
    relative_position,
)

RULES = Rules()


def det(label, score=0.95, box=(10, 10, 30, 30), color=None):
    return Detection(label, score, tuple(float(v) for v in box), color=color)


def spec(entry):
    return PromptSpec.from_metadata(entry)


SINGLE = spec({"tag": "single_object", "include": [{"class": "bench", "count": 1}],
               "prompt": "a photo of a bench"})  # fmt: skip
TWO = spec({"tag": "two_object",
            "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
            "prompt": "a photo of a cat and a dog"})  # fmt: skip
COUNTING = spec({"tag": "counting", "include": [{"class": "clock", "count": 2}],
                 "exclude": [{"class": "clock", "count": 3}],
                 "prompt": "a photo of two clocks"})  # fmt: skip
COLORS = spec({"tag": "colors", "include": [{"class": "car", "count": 1, "color": "pink"}],
               "prompt": "a photo of a pink car"})  # fmt: skip
POSITION = spec({"tag": "position",
                 "include": [{"class": "bench", "count": 1},
                             {"class": "dog", "count": 1, "position": ["right of", 0]}],
                 "prompt": "a photo of a dog right of a bench"})  # fmt: skip
COLOR_ATTR = spec({"tag": "color_attr",
                   "include": [{"class": "oven", "count": 1, "color": "purple"},
                               {"class": "giraffe", "count": 1, "color": "yellow"}],
                   "prompt": "a photo of a purple oven and a yellow giraffe"})  # fmt: skip


def test_single_object_threshold_is_strictly_above_0_3():
    assert RULES.evaluate(SINGLE, [det("bench", 0.31)]).correct
    verdict = RULES.evaluate(SINGLE, [det("bench", 0.3), det("cat", 0.99)])
    assert not verdict.correct
    assert verdict.reason == "expected bench>=1, found 0"
    assert verdict.fraction == 0.0


def test_two_object_needs_both():
    assert RULES.evaluate(TWO, [det("cat"), det("dog")]).correct
    verdict = RULES.evaluate(TWO, [det("cat"), det("dog", 0.2)])
    assert not verdict.correct
    assert [c.satisfied for c in verdict.clauses] == [True, False]
    assert verdict.fraction == 0.5


def test_counting_is_exact_and_uses_the_0_9_threshold():
    two = [det("clock", 0.95), det("clock", 0.92)]
    assert RULES.evaluate(COUNTING, two).correct
    # A third confident clock breaks the exclude clause.
    verdict = RULES.evaluate(COUNTING, [*two, det("clock", 0.91)])
    assert not verdict.correct
    assert [(c.kind, c.satisfied) for c in verdict.clauses] == [("include", True),
                                                                ("exclude", False)]  # fmt: skip
    assert verdict.reason == "expected clock<3, found 3"
    # ... but a third at 0.85 does not count for counting prompts (it would at 0.3).
    assert RULES.evaluate(COUNTING, [*two, det("clock", 0.85)]).correct
    verdict = RULES.evaluate(COUNTING, [det("clock", 0.95), det("clock", 0.9)])
    assert verdict.reason == "expected clock>=2, found 1"


def test_at_most_16_objects_per_class():
    many = [det("clock", 0.99 - i * 0.001) for i in range(20)]
    kept = RULES.select(many, "counting")
    assert len(kept["clock"]) == 16
    assert kept["clock"][0].score == pytest.approx(0.99)  # the most confident first
    # With the cap, an exclude clause of 17 can never fire; with a higher cap it does.
    seventeen = spec({"tag": "counting", "include": [{"class": "clock", "count": 16}],
                      "exclude": [{"class": "clock", "count": 17}], "prompt": "p"})  # fmt: skip
    assert RULES.evaluate(seventeen, many).correct
    assert not Rules(max_objects=20).evaluate(seventeen, many).correct


def test_colors_reads_the_most_confident_object_only():
    assert RULES.evaluate(COLORS, [det("car", color="pink")]).correct
    verdict = RULES.evaluate(COLORS, [det("car", 0.6, color="pink"), det("car", 0.9, color="red")])
    assert not verdict.correct
    assert verdict.reason == "expected pink car>=1, found 0 pink; and 1 red"
    assert not RULES.evaluate(COLORS, []).correct


def test_a_colour_needed_but_not_classified_is_a_programming_error():
    with pytest.raises(ValueError, match="not classified"):
        RULES.evaluate(COLORS, [det("car")])


def test_needs_color_lists_only_what_the_clauses_read():
    kept = RULES.select([det("car", 0.9), det("car", 0.8), det("cat")], "colors")
    assert RULES.needs_color(COLORS, kept) == [kept["car"][0]]
    assert RULES.needs_color(SINGLE, kept) == []


def test_position_right_of_and_the_margin():
    bench = det("bench", box=(0, 0, 20, 20))
    assert RULES.evaluate(POSITION, [bench, det("dog", box=(40, 0, 60, 20))]).correct
    # Left instead of right.
    verdict = RULES.evaluate(POSITION, [bench, det("dog", box=(-40, 0, -20, 20))])
    assert not verdict.correct
    assert verdict.reason == "expected dog right of target, found left of target"
    # Centres 3 px apart: less than the margin 0.1 * (20 + 20) = 4 px, so no relation.
    close = det("dog", box=(3, 0, 23, 20))
    assert relative_position(close, bench) == set()
    assert not RULES.evaluate(POSITION, [bench, close]).correct
    assert relative_position(close, bench, margin=0.01) == {"right of"}
    assert Rules(position_margin=0.01).evaluate(POSITION, [bench, close]).correct


def test_relative_position_on_diagonals_and_vertical():
    a = det("x", box=(0, 0, 10, 10))
    assert relative_position(det("x", box=(0, 50, 10, 60)), a) == {"below"}
    assert relative_position(det("x", box=(0, -50, 10, -40)), a) == {"above"}
    # A 45-degree offset is both right of and below (each shrunk component > 0.5).
    assert relative_position(det("x", box=(100, 100, 110, 110)), a) == {"right of", "below"}
    # Mostly to the right, a little lower: right of only.
    assert relative_position(det("x", box=(100, 20, 110, 30)), a) == {"right of"}


def test_position_fails_without_its_target():
    verdict = RULES.evaluate(POSITION, [det("dog", box=(40, 0, 60, 20))])
    assert [c.satisfied for c in verdict.clauses] == [False, False]
    assert "no target for dog to be right of" in verdict.reason


def test_color_attr_needs_both_colours_right():
    good = [det("oven", color="purple"), det("giraffe", color="yellow")]
    assert RULES.evaluate(COLOR_ATTR, good).correct
    swapped = [det("oven", color="yellow"), det("giraffe", color="purple")]
    verdict = RULES.evaluate(COLOR_ATTR, swapped)
    assert not verdict.correct and verdict.fraction == 0.0
    half = [det("oven", color="purple"), det("giraffe", color="white")]
    assert RULES.evaluate(COLOR_ATTR, half).fraction == 0.5


def test_exclude_counts_objects_above_the_threshold():
    no_dog = spec({"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                   "exclude": [{"class": "dog", "count": 1}],
                   "prompt": "a cat, no dog"})  # fmt: skip
    assert RULES.evaluate(no_dog, [det("cat"), det("dog", 0.25)]).correct
    verdict = RULES.evaluate(no_dog, [det("cat"), det("dog", 0.5)])
    assert not verdict.correct and verdict.fraction == 0.5


def test_metadata_round_trips_and_bad_entries_name_the_key():
    for entry in (SINGLE, TWO, COUNTING, COLORS, POSITION, COLOR_ATTR):
        assert PromptSpec.from_metadata(entry.to_metadata()) == entry
    with pytest.raises(GenEvalSpecError, match="tag 'shapes' is not one of"):
        spec({"tag": "shapes", "include": [{"class": "cat", "count": 1}], "prompt": "p"})
    with pytest.raises(GenEvalSpecError, match=r"include\[0\]: 'count' must be a positive"):
        spec({"tag": "counting", "include": [{"class": "cat", "count": 0}], "prompt": "p"})
    with pytest.raises(GenEvalSpecError, match="color 'teal' is not one of"):
        spec({"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "teal"}],
              "prompt": "p"})  # fmt: skip
    with pytest.raises(GenEvalSpecError, match=r"include\[0\]: position must be"):
        spec({"tag": "position", "include": [{"class": "cat", "count": 1,
              "position": ["left of", 0]}], "prompt": "p"})  # fmt: skip
