"""The toy prompt grammar: parsing, round trips, the train/evaluation split, hard negatives."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from gdmd.errors import GdmdError
from gdmd.interfaces import PromptSource
from gdmd.toy.grammar import (
    CATEGORIES,
    HELDOUT_FRACTION,
    ObjectSpec,
    PromptGrammarError,
    PromptSpec,
    all_prompts,
    canonical,
    evaluation_prompts,
    format_prompt,
    hard_negatives,
    is_heldout,
    is_validation,
    parse_prompt,
    split_prompts,
    training_prompts,
    validation_prompts,
)
from gdmd.toy.prompts import ToyPrompts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red circle", PromptSpec("single", (ObjectSpec("red", "circle"),))),
        ("two blue squares", PromptSpec("counting", (ObjectSpec("blue", "square", 2),))),
        ("three green triangles", PromptSpec("counting", (ObjectSpec("green", "triangle", 3),))),
        (
            "a red circle and a red square",
            PromptSpec("two_objects", (ObjectSpec("red", "circle"), ObjectSpec("red", "square"))),
        ),
        (
            "a red circle and a blue circle",
            PromptSpec("two_objects", (ObjectSpec("red", "circle"), ObjectSpec("blue", "circle"))),
        ),
        (
            "a red circle and a blue square",
            PromptSpec(
                "colour_attribution", (ObjectSpec("red", "circle"), ObjectSpec("blue", "square"))
            ),
        ),
        (
            "a yellow triangle left of a blue circle",
            PromptSpec(
                "position",
                (ObjectSpec("yellow", "triangle"), ObjectSpec("blue", "circle")),
                "left of",
            ),
        ),
        (
            "  A Red square BELOW a green square. ",
            PromptSpec(
                "position", (ObjectSpec("red", "square"), ObjectSpec("green", "square")), "below"
            ),
        ),
    ],
)
def test_parse_examples(text: str, expected: PromptSpec) -> None:
    assert parse_prompt(text) == expected


def test_every_prompt_round_trips_and_categories_have_the_expected_sizes() -> None:
    sizes = {c: len(all_prompts(c)) for c in CATEGORIES}
    assert sizes == {
        "single": 12,
        "counting": 24,
        "two_objects": 60,
        "colour_attribution": 72,
        "position": 528,
    }
    for prompt in all_prompts():
        spec = parse_prompt(prompt)
        assert format_prompt(spec) == prompt
        assert spec.category in CATEGORIES
    assert len(set(all_prompts())) == len(all_prompts())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty prompt"),
        ("a purpel circle", "did you mean 'purple'"),
        ("a red circel", "did you mean 'circle'"),
        ("a red circles", "singular"),
        ("two red circle", "plural"),
        ("a red circle and a red circle", "two red circles"),
        ("a red circle above a red circle", "the same"),
        ("a red circle left a blue square", "is not one of"),
        ("two red circles and a blue square", "'a <colour> <shape>' for both"),
        ("a red circle above", "expected '<a|two|three> <colour> <shape>'"),
    ],
)
def test_prompts_outside_the_grammar_raise_clear_errors(text: str, message: str) -> None:
    with pytest.raises(PromptGrammarError) as caught:
        parse_prompt(text)
    assert isinstance(caught.value, GdmdError)
    if message == "did you mean 'purple'":
        assert "unknown word 'purpel'" in str(caught.value)
    else:
        assert message in str(caught.value)


def test_canonical_merges_wordings_of_one_meaning() -> None:
    def same(a: str, b: str) -> bool:
        return canonical(parse_prompt(a)) == canonical(parse_prompt(b))

    assert same("a red circle and a blue square", "a blue square and a red circle")
    assert same("a red circle left of a blue square", "a blue square right of a red circle")
    assert same("a red circle above a blue square", "a blue square below a red circle")
    assert not same("a red circle left of a blue square", "a red circle right of a blue square")


def test_training_and_evaluation_prompts_are_disjoint_in_meaning() -> None:
    train, held = set(training_prompts()), set(evaluation_prompts())
    assert train and held and not train & held
    train_meanings = {canonical(parse_prompt(p)) for p in train}
    held_meanings = {canonical(parse_prompt(p)) for p in held}
    assert not train_meanings & held_meanings
    assert train | set(split_prompts(heldout=True)) == set(all_prompts())
    assert all(is_heldout(p) for p in held) and not any(is_heldout(p) for p in train)


def test_split_holds_out_about_a_fifth_of_each_category() -> None:
    for category in CATEGORIES:
        meanings = {canonical(parse_prompt(p)) for p in all_prompts(category)}
        held = {canonical(parse_prompt(p)) for p in split_prompts(True, category)}
        assert 1 <= len(held) < len(meanings)
        assert abs(len(held) / len(meanings) - HELDOUT_FRACTION) < 0.06


def test_prompt_lists_are_balanced_across_categories_and_deterministic() -> None:
    train = training_prompts()
    counts = Counter(parse_prompt(p).category for p in train)
    assert set(counts) == set(CATEGORIES) and len(set(counts.values())) == 1
    assert set(train) == set(split_prompts(heldout=False))  # every training prompt present
    evaluation = evaluation_prompts(10)
    assert Counter(parse_prompt(p).category for p in evaluation) == {c: 10 for c in CATEGORIES}
    assert evaluation == evaluation_prompts(10)
    assert set(evaluation_prompts()) == set(split_prompts(heldout=True))
    with pytest.raises(ValueError):
        evaluation_prompts(0)


def test_hard_negatives_differ_in_meaning_and_cover_the_edits() -> None:
    prompt = "a red circle left of a blue square"
    negatives = hard_negatives(prompt)
    own = canonical(parse_prompt(prompt))
    assert all(canonical(parse_prompt(n)) != own for n in negatives)
    assert "a blue circle left of a red square" in negatives  # colours swapped
    assert "a red square left of a blue circle" in negatives  # shapes swapped
    assert "a blue square left of a red circle" in negatives  # relation flipped
    assert "a red circle above a blue square" in negatives  # relation changed
    assert "a green circle left of a blue square" in negatives  # colour changed
    assert "a red circle" in negatives  # object dropped
    counting = hard_negatives("two red circles")
    assert {"three red circles", "a red circle", "two blue circles"} <= set(counting)
    assert "a red circle and a blue square" in hard_negatives("a red circle")  # object added
    swapped = canonical(parse_prompt("a blue circle and a red square"))
    assert swapped in {
        canonical(parse_prompt(n)) for n in hard_negatives("a red circle and a blue square")
    }


def test_toy_prompt_source_is_seeded_balanced_and_draws_training_prompts() -> None:
    source = ToyPrompts(eval_per_category=3)
    assert isinstance(source, PromptSource)
    first = source.sample(500, torch.Generator().manual_seed(0))
    assert first == source.sample(500, torch.Generator().manual_seed(0))
    assert not any(is_heldout(p) for p in first)
    counts = Counter(parse_prompt(p).category for p in first)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) > 60
    assert source.evaluation_prompts() == evaluation_prompts(3)


def test_categories_restrict_the_prompt_lists_and_the_prompt_source() -> None:
    picked = ["counting", "single"]
    train = training_prompts(categories=picked)
    assert {parse_prompt(p).category for p in train} == set(picked)
    assert set(train) == {p for p in training_prompts() if parse_prompt(p).category in picked}
    held = evaluation_prompts(4, categories=picked)
    # Table order, whatever order they were named in.
    assert [parse_prompt(p).category for p in held] == ["single"] * 4 + ["counting"] * 4
    source = ToyPrompts(eval_per_category=4, categories=picked)
    assert source.categories == ("single", "counting")
    drawn = source.sample(200, torch.Generator().manual_seed(0))
    assert set(drawn) <= set(train)
    assert {parse_prompt(p).category for p in drawn} == set(picked)
    assert source.evaluation_prompts() == held
    with pytest.raises(PromptGrammarError, match="unknown category 'colour'"):
        training_prompts(categories=["colour"])
    with pytest.raises(ValueError, match="at least one category"):
        ToyPrompts(categories=[])


def test_validation_split_is_carved_from_training_by_meaning_and_never_evaluated() -> None:
    validation = set(validation_prompts())
    assert validation and validation <= set(training_prompts())
    assert not validation & set(evaluation_prompts())
    for category in CATEGORIES:
        train = {canonical(parse_prompt(p)) for p in split_prompts(False, category)}
        chosen = {spec for spec in train if is_validation(format_prompt(spec))}
        assert 0 < len(chosen) < len(train)  # some, not all, of every category
    # Both wordings of one meaning fall on the same side.
    assert is_validation("a red square above a blue circle") == is_validation(
        "a blue circle below a red square"
    )
    assert [parse_prompt(p).category for p in validation_prompts(2, ["counting", "single"])] == [
        "single",
        "single",
        "counting",
        "counting",
    ]


def test_toy_prompt_source_validation_split_evaluates_on_prompts_it_never_trains_on() -> None:
    source = ToyPrompts(eval_per_category=3, split="validation")
    assert source.evaluation_prompts() == validation_prompts(3)
    drawn = source.sample(2000, torch.Generator().manual_seed(1))
    assert not any(is_validation(p) or is_heldout(p) for p in drawn)
    default = ToyPrompts(eval_per_category=3).sample(2000, torch.Generator().manual_seed(1))
    assert any(is_validation(p) for p in default)  # the default keeps training on all of them
    with pytest.raises(ValueError, match="split"):
        ToyPrompts(split="test")
