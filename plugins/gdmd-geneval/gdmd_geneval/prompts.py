"""GenEval prompts as clauses: the official metadata file, and a parser for its templates.

GenEval's ``prompts/evaluation_metadata.jsonl`` holds one JSON object a line (``tag``,
``include``, optional ``exclude``, ``prompt``). :func:`read_metadata` reads it;
:class:`PromptResolver` turns a prompt into its :class:`~gdmd_geneval.rules.PromptSpec`,
from that file when one is given, else by :func:`parse_prompt`, which understands the six
templates GenEval's prompts are generated from (``prompts/create_prompts.py``)::

    a photo of a bench                               single_object
    a photo of a cat and a dog                       two_object
    a photo of three clocks                          counting      (exactly three)
    a photo of a red car                             colors
    a photo of a dog right of a bench                position
    a photo of a red car and a blue bench            color_attr

over GenEval's 80 object names (COCO's, with "computer mouse", "tv remote" and "computer
keyboard" for COCO's mouse, remote and keyboard). Pure python; imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from gdmd_geneval.rules import COLORS, RELATIONS, GenEvalSpecError, PromptSpec

__all__ = [
    "GENEVAL_CLASSES",
    "PromptResolver",
    "normalise_prompt",
    "parse_prompt",
    "read_metadata",
]

#: GenEval's object names (``object_names.txt``): COCO's 80 classes in COCO's order.
GENEVAL_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse",
    "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip

_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
#: English plurals that the generator's "+s / +es" rule does not give.
_IRREGULAR_PLURALS = {
    "person": ("people",),
    "knife": ("knives",),
    "computer mouse": ("computer mice",),
    "sheep": ("sheep",),
    "skis": ("skis",),
    "scissors": ("scissors",),
}
_PREFIX = "a photo of "
_TEMPLATES = (
    "a photo of a bench | a photo of a cat and a dog | a photo of three clocks | "
    "a photo of a red car | a photo of a dog right of a bench | "
    "a photo of a red car and a blue bench"
)


def normalise_prompt(prompt: str) -> str:
    """Lower case, single spaces, no trailing full stop: how prompts are matched."""
    return " ".join(prompt.lower().split()).rstrip(".").strip()


def _plurals(name: str) -> set[str]:
    # GenEval's generator appends "es" after a final "s" and "s" otherwise ("buses",
    # "skises"); common English forms are accepted too.
    forms = {name + "es" if name.endswith("s") else name + "s"}
    if name.endswith(("ch", "sh", "x", "s")):
        forms.add(name + "es")
    forms.update(_IRREGULAR_PLURALS.get(name, ()))
    return forms


class _Grammar:
    """The noun phrases of GenEval's templates over a class vocabulary."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.singular = {c.lower(): c for c in classes}
        self.plural = {form: c for c in classes for form in _plurals(c.lower())}

    def noun_phrases(self, words: list[str]) -> list[tuple[str | None, str]]:
        """Every reading of ``words`` as ``article [colour] class``: (colour, class)."""
        if len(words) < 2 or words[0] not in ("a", "an"):
            return []
        readings: list[tuple[str | None, str]] = []
        rest = words[1:]
        name = " ".join(rest)
        if name in self.singular:
            readings.append((None, self.singular[name]))
        if rest[0] in COLORS and " ".join(rest[1:]) in self.singular:
            readings.append((rest[0], self.singular[" ".join(rest[1:])]))
        return readings

    def counted(self, words: list[str]) -> tuple[int, str] | None:
        """``number plural`` -> (count, class)."""
        if len(words) < 2 or words[0] not in _NUMBERS:
            return None
        name = " ".join(words[1:])
        label = self.plural.get(name) or (self.singular.get(name) if words[0] == "one" else None)
        return (_NUMBERS[words[0]], label) if label else None


def _split_at(words: list[str], joint: list[str]) -> Iterable[tuple[list[str], list[str]]]:
    n = len(joint)
    for i in range(1, len(words) - n):
        if words[i : i + n] == joint:
            yield words[:i], words[i + n :]


def parse_prompt(prompt: str, classes: Sequence[str] = GENEVAL_CLASSES) -> PromptSpec:
    """The clauses of a prompt written in one of GenEval's templates (see the module).

    Counting prompts become GenEval's "exactly n": include ``n`` and exclude ``n + 1``.
    A prompt that fits no template, or names an object outside ``classes``, raises
    :class:`~gdmd_geneval.rules.GenEvalSpecError`.
    """
    text = normalise_prompt(prompt)
    grammar = _Grammar(classes)
    spec = None
    if text.startswith(_PREFIX):
        spec = _parse_words(prompt, text[len(_PREFIX) :].split(), grammar)
    if spec is None:
        raise GenEvalSpecError(
            f"cannot read the GenEval prompt {prompt!r}: it fits none of GenEval's templates "
            f"({_TEMPLATES}) over its 80 object names and ten colours. Give the reward the "
            "official evaluation_metadata.jsonl (key `metadata`) to score any GenEval prompt."
        )
    return spec


def _parse_words(prompt: str, words: list[str], grammar: _Grammar) -> PromptSpec | None:
    whole = grammar.noun_phrases(words)
    if whole:
        color, label = whole[0]
        if color is None:
            return PromptSpec.from_metadata(
                {"tag": "single_object", "include": [{"class": label, "count": 1}],
                 "prompt": prompt}
            )  # fmt: skip
        return PromptSpec.from_metadata(
            {"tag": "colors", "include": [{"class": label, "count": 1, "color": color}],
             "prompt": prompt}
        )  # fmt: skip
    counted = grammar.counted(words)
    if counted:
        count, label = counted
        return PromptSpec.from_metadata(
            {"tag": "counting", "include": [{"class": label, "count": count}],
             "exclude": [{"class": label, "count": count + 1}], "prompt": prompt}
        )  # fmt: skip
    for left, right in _split_at(words, ["and"]):
        for color_a, label_a in grammar.noun_phrases(left):
            for color_b, label_b in grammar.noun_phrases(right):
                if (color_a is None) != (color_b is None):
                    continue
                first = {"class": label_a, "count": 1}
                second = {"class": label_b, "count": 1}
                tag = "two_object"
                if color_a is not None:
                    first["color"], second["color"], tag = color_a, color_b, "color_attr"
                return PromptSpec.from_metadata(
                    {"tag": tag, "include": [first, second], "prompt": prompt}
                )
    for relation in RELATIONS:
        for left, right in _split_at(words, relation.split()):
            subjects = [lab for col, lab in grammar.noun_phrases(left) if col is None]
            targets = [lab for col, lab in grammar.noun_phrases(right) if col is None]
            if subjects and targets:
                # As GenEval writes it: the target first, the subject placed relative to it.
                return PromptSpec.from_metadata(
                    {"tag": "position",
                     "include": [{"class": targets[0], "count": 1},
                                 {"class": subjects[0], "count": 1, "position": [relation, 0]}],
                     "prompt": prompt}
                )  # fmt: skip
    return None


def read_metadata(path: str | Path) -> list[PromptSpec]:
    """The entries of a GenEval ``evaluation_metadata.jsonl`` (blank lines skipped); an
    unreadable file or malformed line raises :class:`GenEvalSpecError` naming the line."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise GenEvalSpecError(
            f"cannot read the GenEval metadata file {path}: {err.strerror or err}"
        ) from err
    specs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as err:
            raise GenEvalSpecError(f"{path}:{number}: not JSON: {err}") from err
        specs.append(PromptSpec.from_metadata(entry, f"{path}:{number}"))
    if not specs:
        raise GenEvalSpecError(f"the GenEval metadata file {path} has no entries")
    return specs


class PromptResolver:
    """Prompt -> clauses: the metadata entry with that prompt, else :func:`parse_prompt`.

    Prompts are matched after :func:`normalise_prompt`. Results are cached per prompt.
    """

    def __init__(
        self, metadata: str | Path | None = None, classes: Sequence[str] = GENEVAL_CLASSES
    ) -> None:
        self.metadata = None if metadata is None else Path(metadata)
        self.classes = tuple(classes)
        self.table: dict[str, PromptSpec] = {}
        if self.metadata is not None:
            for spec in read_metadata(self.metadata):
                key = normalise_prompt(spec.prompt)
                other = self.table.setdefault(key, spec)
                if other != spec:
                    raise GenEvalSpecError(
                        f"{self.metadata}: the prompt {spec.prompt!r} has two different entries"
                    )
        self.parsed: dict[str, PromptSpec] = {}

    def __call__(self, prompt: str) -> PromptSpec:
        key = normalise_prompt(prompt)
        if key in self.table:
            return self.table[key]
        if key not in self.parsed:
            try:
                self.parsed[key] = parse_prompt(prompt, self.classes)
            except GenEvalSpecError as err:
                if self.metadata is None:
                    raise
                raise GenEvalSpecError(
                    f"the prompt {prompt!r} is not in the GenEval metadata {self.metadata}; {err}"
                ) from None
        return self.parsed[key]
