"""The toy prompt grammar: one category per GenEval category, a parser and a fixed split.

Prompts (lower case, words separated by single spaces; see :func:`parse_prompt`)::

    single              a <colour> <shape>                  "a red circle"
    counting            <two|three> <colour> <shape>s       "two blue squares"
    two_objects         a <c1> <s1> and a <c2> <s2>         "a red circle and a red square"
    colour_attribution  a <c1> <s1> and a <c2> <s2>         "a red circle and a blue square"
    position            a <c1> <s1> <relation> a <c2> <s2>  "a red square above a blue circle"

colours: red, green, blue, yellow; shapes: square, circle, triangle; relations: left of, right
of, above, below.

How ``two_objects`` and ``colour_attribution`` split the "a X and a Y" prompts: in
``two_objects`` the two objects differ in exactly one attribute (same colour and different
shapes, or same shape and different colours), so any image holding both objects is right and
there is no binding to get wrong; that is GenEval's "two objects" test of presence. In
``colour_attribution`` they differ in both colour and shape ("a red circle and a blue square"),
so an image with the colours swapped between the shapes (a blue circle and a red square) has the
right colours and the right shapes but the wrong binding; that is GenEval's "colour
attribution". Two identical objects are not an "and" prompt (say "two red circles").

The split into training and evaluation prompts is by *meaning*: "A and B" and "B and A", or
"A left of B" and "B right of A", are the same prompt for the split, so an evaluation prompt is
never seen in training under another wording. Within each category the canonical prompts are
ordered by a seeded SHA-256 hash and the first ``ceil(HELDOUT_FRACTION * n)`` are held out.

Pure Python; imports no torch. The prompt source built on it is
:class:`gdmd.toy.prompts.ToyPrompts`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, get_args

from gdmd.errors import GdmdError

if TYPE_CHECKING:
    pass

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
#: A prompt category's name (for config fields).
Category = Literal["single", "counting", "two_objects", "colour_attribution", "position"]
#: The categories, one per GenEval category, in table order.
CATEGORIES: tuple[str, ...] = get_args(Category)
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three"}
PLURALS: dict[str, str] = {shape: shape + "s" for shape in SHAPES}

#: Every word the grammar uses (the alignment model's vocabulary is built from this).
VOCABULARY: tuple[str, ...] = (
    "a",
    *COUNT_WORDS.values(),
    *COLOURS,
    *SHAPES,
    *PLURALS.values(),
    "and",
    "left",
    "right",
    "of",
    "above",
    "below",
)
#: The longest prompt in words ("a yellow triangle left of a blue circle").
MAX_PROMPT_WORDS = 8

#: Fraction of each category's canonical prompts held out for evaluation.
HELDOUT_FRACTION = 0.2
#: Salt of the split hash; changing it changes which prompts are held out.
SPLIT_SEED = "gdmd-toy-split-v1"
#: Fraction of each category's canonical *training* prompts set aside for validation.
VALIDATION_FRACTION = 0.2
#: Salt of the validation hash (independent of the evaluation split's).
VALIDATION_SEED = "gdmd-toy-validation-v1"

_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


class PromptGrammarError(GdmdError):
    """A prompt is outside the toy grammar."""

    exit_code = 2


@dataclass(frozen=True)
class ObjectSpec:
    """One prompted object: its colour, shape and how many of it (``count``)."""

    colour: str
    shape: str
    count: int = 1


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt.

    ``objects`` holds one object (``single``, ``counting``) or two (the others). For
    ``position`` the first object is the subject and the second the reference, and the prompt
    says ``objects[0] <relation> objects[1]``; ``relation`` is ``None`` for other categories.
    """

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


def _unknown_word(kind: str, word: str, known: Sequence[str], prompt: str) -> PromptGrammarError:
    close = difflib.get_close_matches(word, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return PromptGrammarError(
        f"unknown {kind} '{word}' in prompt '{prompt}' (known: {', '.join(known)}){hint}"
    )


def _parse_object(words: list[str], prompt: str) -> ObjectSpec:
    """Parse ``a <colour> <shape>`` or ``<two|three> <colour> <shape>s``."""
    if len(words) != 3:
        raise PromptGrammarError(
            f"expected '<a|two|three> <colour> <shape>' but got '{' '.join(words)}' "
            f"in prompt '{prompt}'"
        )
    article, colour, noun = words
    counts = {"a": 1, **{word: n for n, word in COUNT_WORDS.items()}}
    if article not in counts:
        raise _unknown_word("article or count", article, list(counts), prompt)
    if colour not in COLOURS:
        raise _unknown_word("colour", colour, COLOURS, prompt)
    count = counts[article]
    nouns = SHAPES if count == 1 else tuple(PLURALS.values())
    if noun not in nouns:
        if count == 1 and noun in PLURALS.values():
            raise PromptGrammarError(f"'a' needs a singular shape, got '{noun}' in '{prompt}'")
        if count > 1 and noun in SHAPES:
            raise PromptGrammarError(
                f"'{article}' needs a plural shape, got '{noun}' in '{prompt}'"
            )
        raise _unknown_word("shape", noun, nouns, prompt)
    shape = noun if count == 1 else noun[:-1]
    return ObjectSpec(colour=colour, shape=shape, count=count)


@functools.lru_cache(maxsize=4096)
def parse_prompt(text: str) -> PromptSpec:
    """Parse a toy prompt into a :class:`PromptSpec`.

    Surrounding whitespace, case and a final full stop are ignored; anything else outside the
    grammar (see the module docstring) raises :class:`PromptGrammarError` naming the problem.
    """
    prompt = " ".join(text.strip().lower().rstrip(".").split())
    words = prompt.split(" ") if prompt else []
    if not words:
        raise PromptGrammarError("empty prompt")
    for word in words:
        if word not in VOCABULARY:
            raise _unknown_word("word", word, VOCABULARY, prompt)

    if len(words) == 3:
        obj = _parse_object(words, prompt)
        return PromptSpec("single" if obj.count == 1 else "counting", (obj,))

    relation = None
    split_at = None
    for i, word in enumerate(words):
        if word == "and":
            relation, split_at, width = "and", i, 1
        elif word in ("left", "right") and words[i + 1 : i + 2] == ["of"]:
            relation, split_at, width = f"{word} of", i, 2
        elif word in ("above", "below"):
            relation, split_at, width = word, i, 1
        if split_at is not None:
            break
    if relation is None or split_at is None:
        raise PromptGrammarError(
            f"prompt '{prompt}' is not one of: 'a <colour> <shape>', "
            "'<two|three> <colour> <shape>s', 'a <colour> <shape> and a <colour> <shape>', "
            "'a <colour> <shape> <left of|right of|above|below> a <colour> <shape>'"
        )
    first = _parse_object(words[:split_at], prompt)
    second = _parse_object(words[split_at + width :], prompt)
    if first.count != 1 or second.count != 1:
        raise PromptGrammarError(
            f"two-object prompts use 'a <colour> <shape>' for both objects: '{prompt}'"
        )
    if first == second:
        raise PromptGrammarError(
            f"the two objects of '{prompt}' are the same; "
            f"say 'two {first.colour} {PLURALS[first.shape]}' for a count"
        )
    if relation != "and":
        return PromptSpec("position", (first, second), relation)
    differs_in_both = first.colour != second.colour and first.shape != second.shape
    category = "colour_attribution" if differs_in_both else "two_objects"
    return PromptSpec(category, (first, second))


def _object_phrase(obj: ObjectSpec) -> str:
    if obj.count == 1:
        return f"a {obj.colour} {obj.shape}"
    return f"{COUNT_WORDS[obj.count]} {obj.colour} {PLURALS[obj.shape]}"


def format_prompt(spec: PromptSpec) -> str:
    """The prompt text of ``spec``; ``parse_prompt(format_prompt(s)) == s`` for valid specs."""
    if spec.category in ("single", "counting"):
        return _object_phrase(spec.objects[0])
    joiner = "and" if spec.relation is None else spec.relation
    return f"{_object_phrase(spec.objects[0])} {joiner} {_object_phrase(spec.objects[1])}"


def canonical(spec: PromptSpec) -> PromptSpec:
    """The one wording shared by all prompts of the same meaning.

    "B and A" becomes "A and B" (objects sorted); "B right of A" becomes "A left of B" and
    "B below A" becomes "A above B".
    """
    if spec.category in ("two_objects", "colour_attribution"):
        return replace(spec, objects=tuple(sorted(spec.objects, key=_object_order)))
    if spec.relation in ("right of", "below"):
        subject, reference = spec.objects
        return replace(spec, objects=(reference, subject), relation=_OPPOSITE[spec.relation])
    return spec


def _object_order(obj: ObjectSpec) -> tuple[int, int, int]:
    return (COLOURS.index(obj.colour), SHAPES.index(obj.shape), obj.count)


def _all_objects() -> list[ObjectSpec]:
    return [ObjectSpec(c, s) for c in COLOURS for s in SHAPES]


@functools.lru_cache(maxsize=1)
def _prompts_by_category() -> dict[str, tuple[str, ...]]:
    """Every prompt of the grammar, every wording, by category, in a fixed order."""
    objects = _all_objects()
    by_category: dict[str, list[str]] = {category: [] for category in CATEGORIES}
    for obj in objects:
        by_category["single"].append(format_prompt(PromptSpec("single", (obj,))))
        for count in COUNT_WORDS:
            counted = replace(obj, count=count)
            by_category["counting"].append(format_prompt(PromptSpec("counting", (counted,))))
    for first, second in itertools.permutations(objects, 2):
        and_prompt = f"{_object_phrase(first)} and {_object_phrase(second)}"
        by_category[parse_prompt(and_prompt).category].append(and_prompt)
        for relation in RELATIONS:
            by_category["position"].append(
                format_prompt(PromptSpec("position", (first, second), relation))
            )
    return {category: tuple(prompts) for category, prompts in by_category.items()}


def all_prompts(category: str | None = None) -> list[str]:
    """Every prompt of the grammar (every wording), or those of one ``category``."""
    by_category = _prompts_by_category()
    if category is None:
        return [p for c in CATEGORIES for p in by_category[c]]
    _check_category(category)
    return list(by_category[category])


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise _unknown_word("category", category, CATEGORIES, category)


def _split_hash(spec: PromptSpec, salt: str = SPLIT_SEED) -> str:
    key = f"{salt}:{format_prompt(canonical(spec))}"
    return hashlib.sha256(key.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _heldout_canonical() -> frozenset[PromptSpec]:
    held: set[PromptSpec] = set()
    for category in CATEGORIES:
        specs = {canonical(parse_prompt(p)) for p in _prompts_by_category()[category]}
        ordered = sorted(specs, key=_split_hash)
        held.update(ordered[: math.ceil(HELDOUT_FRACTION * len(ordered))])
    return frozenset(held)


def is_heldout(prompt: str) -> bool:
    """Whether ``prompt`` (any wording) belongs to the evaluation split."""
    return canonical(parse_prompt(prompt)) in _heldout_canonical()


def _split(category: str, heldout: bool) -> list[str]:
    prompts = [p for p in _prompts_by_category()[category] if is_heldout(p) == heldout]
    return sorted(prompts, key=lambda p: hashlib.sha256(f"{SPLIT_SEED}:{p}".encode()).hexdigest())


def split_prompts(heldout: bool, category: str | None = None) -> list[str]:
    """The unique prompts (every wording) of the evaluation (``heldout``) or training split."""
    categories = CATEGORIES if category is None else (category,)
    for c in categories:
        _check_category(c)
    return [p for c in categories for p in _split(c, heldout)]


def _balanced(
    heldout: bool, per_category: int | None, categories: Sequence[str] | None = None
) -> list[str]:
    splits = {c: _split(c, heldout) for c in _check_categories(categories)}
    if per_category is None:
        per_category = max(len(prompts) for prompts in splits.values())
    if per_category < 1:
        raise ValueError(f"per_category must be at least 1, got {per_category}")
    return [
        prompt
        for prompts in splits.values()
        for prompt in itertools.islice(itertools.cycle(prompts), per_category)
    ]


def _check_categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    if categories is None:
        return CATEGORIES
    for c in categories:
        _check_category(c)
    if not categories:
        raise ValueError("categories must name at least one category")
    return tuple(c for c in CATEGORIES if c in categories)


def training_prompts(
    per_category: int | None = None, categories: Sequence[str] | None = None
) -> list[str]:
    """A category-balanced list of training prompts: ``per_category`` from each category.

    A category with fewer unique prompts repeats them in turn; the default (``None``) is the
    largest category's size, so every training prompt appears at least once. Drawing uniformly
    from this list draws each category equally often. ``set()`` of it gives the unique prompts.
    ``categories`` keeps only those categories (default: all of :data:`CATEGORIES`).
    """
    return _balanced(heldout=False, per_category=per_category, categories=categories)


def evaluation_prompts(
    per_category: int | None = None, categories: Sequence[str] | None = None
) -> list[str]:
    """A category-balanced list of held-out prompts, as :func:`training_prompts` builds it.

    No evaluation prompt, in any wording, is a training prompt. GenEval's overall score is the
    mean over categories; with this balanced list the plain mean over prompts is the same.
    """
    return _balanced(heldout=True, per_category=per_category, categories=categories)


@functools.lru_cache(maxsize=1)
def _validation_canonical() -> frozenset[PromptSpec]:
    held = _heldout_canonical()
    chosen: set[PromptSpec] = set()
    for category in CATEGORIES:
        specs = {canonical(parse_prompt(p)) for p in _prompts_by_category()[category]} - held
        ordered = sorted(specs, key=lambda spec: _split_hash(spec, VALIDATION_SEED))
        chosen.update(ordered[: math.ceil(VALIDATION_FRACTION * len(ordered))])
    return frozenset(chosen)


def is_validation(prompt: str) -> bool:
    """Whether ``prompt`` (any wording) belongs to the validation split.

    The validation split is carved out of the *training* split (never the evaluation split),
    by meaning, with its own seeded hash: for tuning on prompts that no evaluation number
    uses. The cached teacher and alignment reward are trained on the whole training split,
    validation prompts included; a student trained with the ``toy`` prompt source's
    ``split = "validation"`` never sees them.
    """
    return canonical(parse_prompt(prompt)) in _validation_canonical()


def validation_prompts(
    per_category: int | None = None, categories: Sequence[str] | None = None
) -> list[str]:
    """A category-balanced list of validation prompts, as :func:`evaluation_prompts` builds
    it from the evaluation split (see :func:`is_validation`)."""
    splits = {
        c: [p for p in _split(c, heldout=False) if is_validation(p)]
        for c in _check_categories(categories)
    }
    if per_category is None:
        per_category = max(len(prompts) for prompts in splits.values())
    if per_category < 1:
        raise ValueError(f"per_category must be at least 1, got {per_category}")
    return [
        prompt
        for prompts in splits.values()
        for prompt in itertools.islice(itertools.cycle(prompts), per_category)
    ]


def hard_negatives(prompt: str) -> list[str]:
    """Prompts one edit away from ``prompt`` that mean something else (canonical wording).

    Edits: change one object's colour or shape, swap the colours or the shapes of two objects,
    change or flip the relation, change a count (including to one), drop one of two objects,
    add an object to a single one. Used as contrastive hard negatives by the alignment model.
    Whether an image satisfies a negative is still up to the caller (a position render also
    satisfies the "A and B" prompt of its objects, which is not produced here).
    """
    spec = parse_prompt(prompt)
    candidates: list[PromptSpec] = []
    objects = list(spec.objects)

    def with_objects(new: list[ObjectSpec]) -> None:
        candidates.append(replace(spec, objects=tuple(new)))

    for i, obj in enumerate(objects):
        for colour in COLOURS:
            if colour != obj.colour:
                with_objects(objects[:i] + [replace(obj, colour=colour)] + objects[i + 1 :])
        for shape in SHAPES:
            if shape != obj.shape:
                with_objects(objects[:i] + [replace(obj, shape=shape)] + objects[i + 1 :])
    if len(objects) == 1:
        obj = objects[0]
        for count in (1, *COUNT_WORDS):
            if count != obj.count:
                counted = replace(obj, count=count)
                category = "single" if count == 1 else "counting"
                candidates.append(PromptSpec(category, (counted,)))
        if obj.count == 1:
            for other in _all_objects():
                if other != obj:
                    candidates.append(PromptSpec("two_objects", (obj, other)))
    else:
        first, second = objects
        with_objects([replace(first, colour=second.colour), replace(second, colour=first.colour)])
        with_objects([replace(first, shape=second.shape), replace(second, shape=first.shape)])
        for obj in objects:
            candidates.append(PromptSpec("single", (obj,)))
        if spec.relation is not None:
            for relation in RELATIONS:
                if relation != spec.relation:
                    candidates.append(replace(spec, relation=relation))

    own = canonical(spec)
    negatives: dict[PromptSpec, None] = {}
    for candidate in candidates:
        text = format_prompt(candidate)
        try:
            parsed = canonical(parse_prompt(text))
        except PromptGrammarError:
            continue  # e.g. an edit that made both objects identical
        if parsed != own:
            negatives[parsed] = None
    return [format_prompt(n) for n in negatives]
