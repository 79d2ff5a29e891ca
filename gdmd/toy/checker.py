"""The exact rule-based checker: does an image satisfy its prompt? (the GenEval analogue)

From pixels, in four steps:

1. **Colour classes.** A pixel whose brightest channel is below :data:`BRIGHTNESS_THRESHOLD`
   is background. Otherwise its colour is divided by that brightest channel (so a dim or
   washed-out red is still red) and it takes the nearest of the four pure colours.
2. **Objects.** 4-connected components of equal colour class (labelled by min-label
   propagation with pointer jumping, vectorised over the batch). Components smaller than
   :data:`MIN_OBJECT_PIXELS` (scaled with the image area) are noise and dropped.
3. **Shapes.** From the bounding box: aspect ratio, fill ratio (pixels / box area: square 1,
   circle ~pi/4, triangle ~1/2) and the centroid's relative height (1/2 for square and circle,
   ~2/3 for an upward triangle, whose mass sits low). What fits none is ``"unknown"``.
4. **Rules.** Strict like GenEval: the multiset of detected (colour, shape) objects must equal
   the prompted one exactly. An object of a prompted kind beyond the count fails counting, and
   an unprompted object (any other colour or shape, or an unrecognised blob) fails every
   category, because the renderer never draws one. For ``position``, the subject's centroid
   must be offset from the reference's along the relation's axis by at least
   :data:`POSITION_DEAD_ZONE` px and by at least as much as across it (within 45 degrees).
   GenEval also judges relations from box centres, with a dead zone; its cone is wider.

:func:`check_objects` applies step 4 to any objects with ``colour``, ``kind`` and ``centre``,
so the same rules judge a :class:`~gdmd.toy.render.Scene`'s shapes (see :func:`scene_satisfies`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gdmd.toy.grammar import CATEGORIES, PromptSpec, parse_prompt

if TYPE_CHECKING:
    import torch

    from gdmd.toy.render import Scene

#: Colour classes, in the order of the class indices the checker uses.
CLASS_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
_PURE = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)

BRIGHTNESS_THRESHOLD = 0.5
#: Smallest object, in pixels of a 32x32 image (the smallest rendered triangle has ~36).
MIN_OBJECT_PIXELS = 16
#: Square when the fill ratio is at least this (rendered: 1.0; circles <= 0.86).
SQUARE_MIN_FILL = 0.9
#: Circle when the fill ratio is at least this (rendered circles >= 0.77).
CIRCLE_MIN_FILL = 0.68
#: Triangle when the centroid sits lower than this fraction of the box height (rendered ~0.63,
#: symmetric shapes 0.5).
TRIANGLE_MIN_CENTROID_HEIGHT = 0.57
#: Triangle fill ratio range (rendered 0.58-0.63).
TRIANGLE_FILL_RANGE = (0.4, 0.8)
#: Largest box aspect ratio (long side / short side) of any shape.
MAX_ASPECT = 1.5
#: Smallest axial offset, in pixels, for a relation to hold.
POSITION_DEAD_ZONE = 3.0


class _Located(Protocol):
    @property
    def colour(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def centre(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class DetectedObject:
    """A connected component the checker found: colour class, shape and geometry.

    ``centre`` is the pixel centroid ``(x, y)`` (y down); ``box`` is ``(x0, y0, x1, y1)``,
    inclusive pixel indices; ``fill`` the fraction of the box covered.
    """

    colour: str
    kind: str
    centre: tuple[float, float]
    pixels: int
    box: tuple[int, int, int, int]
    fill: float


@dataclass(frozen=True)
class CheckResult:
    """The checker's verdict: ``ok``, the prompt's ``category``, and why it failed (or "ok")."""

    ok: bool
    category: str
    reason: str


def _as_numpy(images: Any) -> np.ndarray:
    if hasattr(images, "detach"):
        images = images.detach().to("cpu").float().numpy()
    return np.asarray(images, dtype=np.float32)


def colour_classes(images: np.ndarray) -> np.ndarray:
    """Per-pixel colour class of ``[B, 3, H, W]`` images in [0, 1]: ``[B, H, W]`` int, -1 for
    background, else an index into :data:`CLASS_COLOURS`."""
    brightness = images.max(axis=1)
    chroma = images / np.maximum(brightness, 1e-6)[:, None]
    distances = ((chroma[:, None] - _PURE[None, :, :, None, None]) ** 2).sum(axis=2)
    classes = distances.argmin(axis=1)
    return np.where(brightness >= BRIGHTNESS_THRESHOLD, classes, -1)


def label_components(classes: np.ndarray) -> np.ndarray:
    """4-connected components of equal, non-negative class in ``[B, H, W]``.

    Returns labels ``[B, H, W]``: -1 for background, else the flat index of some pixel of the
    component (equal labels, same component). Min-label propagation: every pixel repeatedly
    takes the smallest label among itself and its same-class neighbours, and each label then
    jumps to its own pixel's label, which halves chains; stops when nothing changes.
    """
    foreground = classes >= 0
    size = classes.size
    sentinel = size
    labels = np.where(foreground, np.arange(size).reshape(classes.shape), sentinel)
    same_vertical = foreground[:, 1:] & (classes[:, 1:] == classes[:, :-1])
    same_horizontal = foreground[:, :, 1:] & (classes[:, :, 1:] == classes[:, :, :-1])
    while True:
        new = labels.copy()
        np.minimum(new[:, 1:], np.where(same_vertical, labels[:, :-1], sentinel), out=new[:, 1:])
        np.minimum(new[:, :-1], np.where(same_vertical, labels[:, 1:], sentinel), out=new[:, :-1])
        np.minimum(
            new[:, :, 1:], np.where(same_horizontal, labels[:, :, :-1], sentinel), out=new[:, :, 1:]
        )
        np.minimum(
            new[:, :, :-1],
            np.where(same_horizontal, labels[:, :, 1:], sentinel),
            out=new[:, :, :-1],
        )
        flat = np.append(new.ravel(), sentinel)
        new = flat[new]
        if np.array_equal(new, labels):
            break
        labels = new
    return np.where(foreground, labels, -1)


def classify_shape(width: int, height: int, fill: float, centroid_height: float) -> str:
    """Shape of a component from its box ``width``/``height``, ``fill`` ratio and the
    centroid's height in the box (0 top, 1 bottom): square, circle, triangle or unknown."""
    if max(width, height) > MAX_ASPECT * min(width, height):
        return "unknown"
    if centroid_height >= TRIANGLE_MIN_CENTROID_HEIGHT:
        low, high = TRIANGLE_FILL_RANGE
        return "triangle" if low <= fill <= high else "unknown"
    if centroid_height < 1.0 - TRIANGLE_MIN_CENTROID_HEIGHT:
        return "unknown"  # mass high in the box: e.g. an upside-down triangle
    if fill >= SQUARE_MIN_FILL:
        return "square"
    if fill >= CIRCLE_MIN_FILL:
        return "circle"
    return "unknown"


def _objects_of(classes: np.ndarray, labels: np.ndarray, min_pixels: int) -> list[DetectedObject]:
    """Objects of one image from its ``[H, W]`` classes and labels."""
    found = []
    ids, inverse, counts = np.unique(labels.ravel(), return_inverse=True, return_counts=True)
    grid = np.indices(labels.shape)
    rows, cols = grid[0].ravel(), grid[1].ravel()
    for index, (label, count) in enumerate(zip(ids, counts, strict=True)):
        if label < 0 or count < min_pixels:
            continue
        member = inverse == index
        ys, xs = rows[member], cols[member]
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        width, height = x1 - x0 + 1, y1 - y0 + 1
        fill = float(count) / (width * height)
        centroid_height = (float(ys.mean()) + 0.5 - y0) / height
        colour = CLASS_COLOURS[int(classes.ravel()[member][0])]
        found.append(
            DetectedObject(
                colour=colour,
                kind=classify_shape(width, height, fill, centroid_height),
                centre=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
                pixels=int(count),
                box=(x0, y0, x1, y1),
                fill=fill,
            )
        )
    return found


def detect_objects_batch(images: Any) -> list[list[DetectedObject]]:
    """Objects in each of ``[B, 3, H, W]`` images in [0, 1] (numpy array or torch tensor)."""
    array = _as_numpy(images)
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(array.shape)}")
    classes = colour_classes(array)
    labels = label_components(classes)
    height, width = array.shape[2:]
    min_pixels = max(1, round(MIN_OBJECT_PIXELS * height * width / 1024))
    return [_objects_of(classes[i], labels[i], min_pixels) for i in range(array.shape[0])]


def detect_objects(image: Any) -> list[DetectedObject]:
    """Objects in one ``[3, H, W]`` image in [0, 1]."""
    return detect_objects_batch(_as_numpy(image)[None])[0]


def _describe(counter: Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{n} {colour} {kind}" for (colour, kind), n in sorted(counter.items()))


def relation_holds(
    subject: tuple[float, float], reference: tuple[float, float], relation: str
) -> bool:
    """Whether centre ``subject`` is ``relation`` (left of, right of, above, below) of
    ``reference``: axial offset >= :data:`POSITION_DEAD_ZONE` and >= the perpendicular one."""
    dx, dy = subject[0] - reference[0], subject[1] - reference[1]
    axial, perpendicular = {
        "left of": (-dx, dy),
        "right of": (dx, dy),
        "above": (-dy, dx),
        "below": (dy, dx),
    }[relation]
    return axial >= POSITION_DEAD_ZONE and axial >= abs(perpendicular)


def check_objects(objects: Sequence[_Located], spec: PromptSpec | str) -> CheckResult:
    """Judge found ``objects`` (anything with ``colour``, ``kind``, ``centre``) against a prompt."""
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    found = Counter((obj.colour, obj.kind) for obj in objects)
    wanted = Counter({(obj.colour, obj.shape): obj.count for obj in spec.objects})
    if found != wanted:
        missing, extra = wanted - found, found - wanted
        parts = []
        if missing:
            parts.append(f"missing {_describe(missing)}")
        if extra:
            parts.append(f"unexpected {_describe(extra)}")
        return CheckResult(False, spec.category, "; ".join(parts))
    if spec.relation is not None:
        subject_spec, reference_spec = spec.objects
        subject = next(
            o for o in objects if (o.colour, o.kind) == (subject_spec.colour, subject_spec.shape)
        )
        reference = next(
            o
            for o in objects
            if (o.colour, o.kind) == (reference_spec.colour, reference_spec.shape)
        )
        if not relation_holds(subject.centre, reference.centre, spec.relation):
            dx = subject.centre[0] - reference.centre[0]
            dy = subject.centre[1] - reference.centre[1]
            return CheckResult(
                False,
                spec.category,
                f"{subject_spec.colour} {subject_spec.shape} is not {spec.relation} "
                f"{reference_spec.colour} {reference_spec.shape} (offset dx={dx:+.1f}, "
                f"dy={dy:+.1f} px, y down)",
            )
    return CheckResult(True, spec.category, "ok")


def scene_satisfies(scene: Scene, spec: PromptSpec | str) -> bool:
    """Whether a scene description satisfies a prompt, by the same rules as the checker."""
    return check_objects(scene.shapes, spec).ok


def check(image: Any, prompt: str) -> CheckResult:
    """Check one ``[3, H, W]`` image in [0, 1] (numpy or torch) against ``prompt``."""
    return check_objects(detect_objects(image), prompt)


def check_batch(images: Any, prompts: Sequence[str]) -> list[bool]:
    """Check ``[B, 3, H, W]`` images in [0, 1] (torch tensor or numpy) against ``B`` prompts."""
    detected = detect_objects_batch(images)
    if len(detected) != len(prompts):
        raise ValueError(f"{len(detected)} images but {len(prompts)} prompts")
    return [check_objects(objects, p).ok for objects, p in zip(detected, prompts, strict=True)]


def check_batch_results(images: Any, prompts: Sequence[str]) -> list[CheckResult]:
    """Like :func:`check_batch`, with each verdict's category and reason."""
    detected = detect_objects_batch(images)
    if len(detected) != len(prompts):
        raise ValueError(f"{len(detected)} images but {len(prompts)} prompts")
    return [check_objects(objects, p) for objects, p in zip(detected, prompts, strict=True)]


class CheckerReward:
    """The checker as a reward: 1.0 where an image satisfies its prompt, else 0.0.

    Not differentiable (``differentiable = False``); returns float32 ``[B]`` on the images'
    device. Implements :class:`~gdmd.interfaces.RewardModel`.
    """

    differentiable = False

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        import torch

        verdicts = check_batch(images.clamp(0.0, 1.0), prompts)
        return torch.tensor(verdicts, dtype=torch.float32, device=images.device)


def accuracy_by_category(prompts: Sequence[str], verdicts: Sequence[bool]) -> dict[str, float]:
    """GenEval-style summary: the fraction of passing images per category, and ``"overall"``,
    the mean of the category scores (so every category counts equally, as in GenEval)."""
    if len(prompts) != len(verdicts):
        raise ValueError(f"{len(prompts)} prompts but {len(verdicts)} verdicts")
    by_category: dict[str, list[bool]] = {}
    for prompt, verdict in zip(prompts, verdicts, strict=True):
        by_category.setdefault(parse_prompt(prompt).category, []).append(bool(verdict))
    scores = {
        category: float(np.mean(by_category[category]))
        for category in CATEGORIES
        if category in by_category
    }
    if scores:
        scores["overall"] = float(np.mean(list(scores.values())))
    return scores
