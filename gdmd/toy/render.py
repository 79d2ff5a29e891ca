"""The procedural renderer: 32x32 RGB images of 1-3 coloured shapes on black.

Shapes are filled squares, circles and upward triangles, 8-12 px across, in four pure colours,
never overlapping and at least :data:`MIN_GAP` px apart (so two shapes of one colour never merge
into one connected component). A :class:`Scene` is the exact description of an image;
:func:`sample_scene` draws a random scene that satisfies a prompt, and :func:`render` draws it.

Position scenes are unambiguous by construction: the offset of the subject from the reference
along the relation's axis is at least the two half-sizes plus the gap, and the perpendicular
offset is at most half of it (the checker accepts up to equal, see :mod:`gdmd.toy.checker`).

Rendering is numpy; :func:`training_batches` returns torch tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gdmd.toy.grammar import CATEGORIES, PromptSpec, parse_prompt

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 32
COLOUR_VALUES: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
MIN_SIZE = 8
MAX_SIZE = 12
#: Smallest distance in pixels between the bounding boxes of two shapes.
MIN_GAP = 2
#: Free pixels between a shape and the image border.
BORDER = 1
#: Largest perpendicular offset of a position scene, as a fraction of the axial offset.
MAX_PERPENDICULAR_RATIO = 0.5

_ROWS, _COLS = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
_PIXEL_Y = _ROWS + 0.5
_PIXEL_X = _COLS + 0.5


@dataclass(frozen=True)
class Shape:
    """One shape: ``kind`` (square, circle, triangle), ``colour``, and its ``size`` x ``size``
    bounding box whose top-left pixel is column ``x``, row ``y``."""

    kind: str
    colour: str
    x: int
    y: int
    size: int

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the bounding box, ``(x, y)`` in pixels (y grows downwards)."""
        return (self.x + self.size / 2.0, self.y + self.size / 2.0)

    def mask(self) -> np.ndarray:
        """Boolean ``[IMAGE_SIZE, IMAGE_SIZE]`` mask of the pixels this shape covers."""
        left, top, size = self.x, self.y, self.size
        inside_box = (_COLS >= left) & (_COLS < left + size) & (_ROWS >= top) & (_ROWS < top + size)
        if self.kind == "square":
            return inside_box
        cx, cy = self.centre
        if self.kind == "circle":
            radius = size / 2.0
            return inside_box & ((_PIXEL_X - cx) ** 2 + (_PIXEL_Y - cy) ** 2 <= radius**2)
        if self.kind == "triangle":
            # Apex on top, base on the bottom row; row k (from the top) is k + 1 px wide.
            half_width = (_ROWS - top + 1) / 2.0
            return inside_box & (np.abs(_PIXEL_X - cx) <= half_width)
        raise ValueError(f"unknown shape kind '{self.kind}'")


@dataclass(frozen=True)
class Scene:
    """An image's exact description: its shapes, in drawing order."""

    shapes: tuple[Shape, ...]


def render(scene: Scene) -> np.ndarray:
    """Draw ``scene``: float32 ``[3, IMAGE_SIZE, IMAGE_SIZE]`` in ``[0, 1]``, black background."""
    image = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for shape in scene.shapes:
        image[:, shape.mask()] = np.asarray(COLOUR_VALUES[shape.colour], dtype=np.float32)[:, None]
    return image


def render_batch(scenes: Sequence[Scene]) -> np.ndarray:
    """Draw several scenes: float32 ``[B, 3, IMAGE_SIZE, IMAGE_SIZE]`` in ``[0, 1]``."""
    if not scenes:
        return np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    return np.stack([render(scene) for scene in scenes])


def _separated(a: Shape, b: Shape) -> bool:
    """Whether the bounding boxes of ``a`` and ``b`` are at least ``MIN_GAP`` px apart."""
    apart_x = a.x + a.size + MIN_GAP <= b.x or b.x + b.size + MIN_GAP <= a.x
    apart_y = a.y + a.size + MIN_GAP <= b.y or b.y + b.size + MIN_GAP <= a.y
    return apart_x or apart_y


def _relation_holds_clearly(subject: Shape, reference: Shape, relation: str) -> bool:
    (sx, sy), (rx, ry) = subject.centre, reference.centre
    axial, perpendicular = {
        "left of": (rx - sx, sy - ry),
        "right of": (sx - rx, sy - ry),
        "above": (ry - sy, sx - rx),
        "below": (sy - ry, sx - rx),
    }[relation]
    needed = (subject.size + reference.size) / 2.0 + MIN_GAP
    return axial >= needed and abs(perpendicular) <= MAX_PERPENDICULAR_RATIO * axial


def _random_shape(kind: str, colour: str, rng: np.random.Generator) -> Shape:
    size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    last = IMAGE_SIZE - BORDER - size
    return Shape(
        kind, colour, int(rng.integers(BORDER, last + 1)), int(rng.integers(BORDER, last + 1)), size
    )


def sample_scene(spec: PromptSpec | str, rng: np.random.Generator) -> Scene:
    """A random scene that satisfies ``spec`` (a :class:`PromptSpec` or prompt text).

    Sizes and positions are uniform among the placements that keep every shape inside the
    image, :data:`MIN_GAP` px from the others and, for ``position``, clearly on the prompted
    side (rejection sampling). The scene holds exactly the prompted objects and nothing else.
    """
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    wanted = [(obj.shape, obj.colour) for obj in spec.objects for _ in range(obj.count)]
    for _ in range(10_000):
        shapes = [_random_shape(kind, colour, rng) for kind, colour in wanted]
        if any(not _separated(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1 :]):
            continue
        if spec.relation is not None and not _relation_holds_clearly(
            shapes[0], shapes[1], spec.relation
        ):
            continue
        return Scene(tuple(shapes))
    raise RuntimeError(f"could not place the shapes of {spec}")  # pragma: no cover


def render_prompts(
    prompts: Sequence[str], rng: np.random.Generator
) -> tuple[np.ndarray, list[Scene]]:
    """Render one random scene per prompt: ``([B, 3, H, W] float32 in [0, 1], scenes)``."""
    scenes = [sample_scene(prompt, rng) for prompt in prompts]
    return render_batch(scenes), scenes


def training_batches(
    prompts: Sequence[str],
    batch_size: int,
    seed: int = 0,
    balance_categories: bool = True,
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless batches ``(images, prompts)`` for training a teacher on renders.

    ``images`` are float32 ``[batch_size, 3, IMAGE_SIZE, IMAGE_SIZE]`` scaled to ``[-1, 1]``;
    ``prompts`` the ``batch_size`` prompts they render. With ``balance_categories`` each prompt
    is drawn by first drawing one of the categories present in ``prompts`` uniformly, then a
    prompt of it uniformly; otherwise uniformly from ``prompts``. Deterministic given ``seed``.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    unique = list(dict.fromkeys(prompts))
    if not unique:
        raise ValueError("training_batches needs at least one prompt")
    if balance_categories:
        by_category: dict[str, list[str]] = {}
        for prompt in unique:
            by_category.setdefault(parse_prompt(prompt).category, []).append(prompt)
        pools = [by_category[c] for c in CATEGORIES if c in by_category]
    else:
        pools = [list(prompts)]
    rng = np.random.default_rng(seed)
    while True:
        pool_indices = rng.integers(len(pools), size=batch_size)
        batch = [pools[i][int(rng.integers(len(pools[i])))] for i in pool_indices]
        images, _ = render_prompts(batch, rng)
        yield torch.from_numpy(images * 2.0 - 1.0), batch
