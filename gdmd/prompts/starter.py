"""The starter prompt file the SD3 recipes train on out of the box.

``recipes/prompts/sd3_starter.txt`` is this module's output, so the file can be rebuilt and a
test checks that the shipped copy equals it::

    python -m gdmd.prompts.starter recipes/prompts/sd3_starter.txt

The prompts come from word lists written here, combined without a random number generator
(each category keeps the combinations whose SHA-256 digests sort first), so the output
depends on nothing but this file. The categories follow the ones GenEval scores
(single object, two objects, counting, colours, colour attribution, position), plus styled
scenes for image quality: a few hundred prompts to start a run, not a caption set to train
a release on (docs/models/sd3.md names those).
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Objects and their plurals: concrete, countable things a detector or a person can check.
OBJECTS: dict[str, str] = {
    "apple": "apples",
    "banana": "bananas",
    "bicycle": "bicycles",
    "bird": "birds",
    "book": "books",
    "bottle": "bottles",
    "bowl": "bowls",
    "cake": "cakes",
    "candle": "candles",
    "car": "cars",
    "cat": "cats",
    "chair": "chairs",
    "clock": "clocks",
    "cup": "cups",
    "dog": "dogs",
    "umbrella": "umbrellas",
    "guitar": "guitars",
    "horse": "horses",
    "kite": "kites",
    "lamp": "lamps",
    "backpack": "backpacks",
    "teapot": "teapots",
    "vase": "vases",
    "rabbit": "rabbits",
    "sailboat": "sailboats",
    "suitcase": "suitcases",
    "sunflower": "sunflowers",
    "teddy bear": "teddy bears",
    "tomato": "tomatoes",
    "wine glass": "wine glasses",
}

#: GenEval's ten colour names.
COLOURS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
)

COUNTS: tuple[str, ...] = ("two", "three", "four", "five", "six")

RELATIONS: tuple[str, ...] = (
    "to the left of",
    "to the right of",
    "above",
    "below",
    "next to",
    "behind",
    "in front of",
)

STYLES: tuple[str, ...] = (
    "a photograph",
    "an oil painting",
    "a watercolour painting",
    "a pencil sketch",
    "a 3D render",
    "an anime illustration",
    "a studio product photo",
    "a vintage film photograph",
    "a digital illustration",
    "a charcoal drawing",
    "a low-poly render",
    "a claymation still",
)

SETTINGS: tuple[str, ...] = (
    "on a wooden table",
    "in a sunlit kitchen",
    "on a beach at sunset",
    "in a snowy forest",
    "on a city street at night",
    "in a misty mountain valley",
    "on a grassy hill",
    "in a cozy library",
    "on a marble floor",
    "in a flower garden",
)

SURFACES: tuple[str, ...] = (
    "on a table",
    "on the grass",
    "on a white background",
    "on a shelf",
    "on the floor",
    "in the snow",
)

SUBJECTS: tuple[str, ...] = (
    "an old fisherman mending a net",
    "a fox curled up asleep",
    "a child flying a kite",
    "a lighthouse in a storm",
    "a steam train crossing a bridge",
    "an astronaut reading a newspaper",
    "a market stall piled with fruit",
    "a knight resting under a tree",
    "a cat wearing a tiny crown",
    "a cabin with smoke rising from the chimney",
    "a hot air balloon over a canyon",
    "a robot watering houseplants",
    "a dragon made of autumn leaves",
    "a jazz band playing in a small club",
    "an owl perched on a lantern",
    "a koi pond in the rain",
)

LIGHTING: tuple[str, ...] = (
    "golden hour light",
    "soft overcast light",
    "dramatic rim lighting",
    "neon light",
    "candlelight",
    "bright midday sun",
)

#: Prompts per category, in the order they appear in the file.
COUNTS_PER_CATEGORY: dict[str, int] = {
    "single_object": 60,
    "two_objects": 60,
    "counting": 60,
    "colors": 50,
    "color_attr": 60,
    "position": 60,
    "scene": 70,
}


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pick(options: Sequence[tuple[Any, ...]], n: int, category: str) -> list[tuple[Any, ...]]:
    """``n`` distinct combinations spread over ``options``: those whose SHA-256 digest (of the
    category and the words) sorts first. A fixed, well-mixed choice that needs no random
    number generator, so it is the same on every Python and platform."""
    if n > len(options):
        raise ValueError(f"asked for {n} {category} prompts from {len(options)} combinations")

    def digest(combo: tuple[object, ...]) -> str:
        return hashlib.sha256(repr((category, combo)).encode("utf-8")).hexdigest()

    return sorted(options, key=digest)[:n]


def _pairs(words: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in itertools.permutations(words, 2)]


def starter_prompts() -> list[str]:
    """Every starter prompt, category by category; no duplicates."""
    objects = list(OBJECTS)
    pairs = _pairs(objects)
    product = itertools.product

    def pick(category: str, *words: Sequence[Any]) -> list[tuple[Any, ...]]:
        return _pick(list(product(*words)), COUNTS_PER_CATEGORY[category], category)

    prompts: list[str] = []
    for obj, style, setting in pick("single_object", objects, STYLES, SETTINGS):
        prompts.append(f"{style} of {_article(obj)} {setting}")
    for (a, b), surface in pick("two_objects", pairs, SURFACES):
        prompts.append(f"a photo of {_article(a)} and {_article(b)} {surface}")
    for count, obj, surface in pick("counting", COUNTS, objects, SURFACES):
        prompts.append(f"a photo of {count} {OBJECTS[obj]} {surface}")
    for colour, obj, style in pick("colors", COLOURS, objects, STYLES):
        prompts.append(f"{style} of {_article(colour)} {obj}")
    for (c1, c2), (a, b) in pick("color_attr", _pairs(COLOURS), pairs):
        prompts.append(f"a photo of {_article(c1)} {a} and {_article(c2)} {b}")
    for (a, b), relation in pick("position", pairs, RELATIONS):
        prompts.append(f"a photo of {_article(a)} {relation} {_article(b)}")
    for subject, style, light in pick("scene", SUBJECTS, STYLES, LIGHTING):
        prompts.append(f"{style} of {subject}, {light}")
    return prompts


def starter_text() -> str:
    """The starter file's text: one prompt a line, ending in a newline."""
    return "\n".join(starter_prompts()) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gdmd.prompts.starter OUT``: write the starter prompt file to ``OUT``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m gdmd.prompts.starter OUT\n")
        return 2
    Path(args[0]).write_text(starter_text(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
