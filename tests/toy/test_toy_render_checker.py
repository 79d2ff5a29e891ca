"""The renderer and the exact checker: clean renders pass, each kind of corruption fails."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from gdmd.interfaces import RewardModel
from gdmd.toy.checker import (
    CheckerReward,
    accuracy_by_category,
    check,
    check_batch,
    check_batch_results,
    detect_objects,
    scene_satisfies,
)
from gdmd.toy.grammar import CATEGORIES, COLOURS, evaluation_prompts, parse_prompt, training_prompts
from gdmd.toy.render import (
    IMAGE_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    Scene,
    Shape,
    render,
    render_batch,
    render_prompts,
    sample_scene,
    training_batches,
)

PROMPTS = training_prompts(40) + evaluation_prompts(20)  # 300 prompts, 60 per category


def free_shape(scene: Scene, kind: str, colour: str, rng: np.random.Generator) -> Shape:
    """A shape of ``kind``/``colour`` placed clear of every shape of ``scene``."""
    for _ in range(10_000):
        size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
        x, y = (int(v) for v in rng.integers(1, IMAGE_SIZE - size, size=2))
        shape = Shape(kind, colour, x, y, size)
        candidate = Scene((*scene.shapes, shape))
        if all(
            not (render(Scene((s,))).any(0) & render(Scene((shape,))).any(0)).any()
            for s in scene.shapes
        ) and len(detect_objects(render(candidate))) == len(candidate.shapes):
            return shape
    raise AssertionError("no free place")  # pragma: no cover


def test_render_contract() -> None:
    scene = sample_scene("a red circle left of a blue square", np.random.default_rng(0))
    image = render(scene)
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and image.dtype == np.float32
    colours = {tuple(image[:, y, x]) for y in range(IMAGE_SIZE) for x in range(IMAGE_SIZE)}
    assert colours == {(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}
    assert render_batch([scene, scene]).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_sampled_scenes_satisfy_their_prompts() -> None:
    rng = np.random.default_rng(1)
    for prompt in PROMPTS:
        scene = sample_scene(prompt, rng)
        spec = parse_prompt(prompt)
        assert len(scene.shapes) == sum(o.count for o in spec.objects)
        assert all(MIN_SIZE <= s.size <= MAX_SIZE for s in scene.shapes)
        assert scene_satisfies(scene, prompt)


def test_checker_accepts_clean_renders() -> None:
    images, _ = render_prompts(PROMPTS, np.random.default_rng(2))
    results = check_batch_results(torch.from_numpy(images), PROMPTS)
    failures = [(p, r.reason) for p, r in zip(PROMPTS, results, strict=True) if not r.ok]
    assert not failures
    assert Counter(r.category for r in results) == {c: 60 for c in CATEGORIES}


def test_checker_finds_the_rendered_shapes() -> None:
    rng = np.random.default_rng(3)
    for kind in ("square", "circle", "triangle"):
        for size in range(MIN_SIZE, MAX_SIZE + 1):
            shape = Shape(kind, str(rng.choice(COLOURS)), 5, 7, size)
            (found,) = detect_objects(render(Scene((shape,))))
            assert (found.kind, found.colour) == (kind, shape.colour)


def test_checker_tolerates_imperfect_pixels() -> None:
    rng = np.random.default_rng(4)
    images, _ = render_prompts(PROMPTS[::3], rng)
    dimmed = images * 0.7 + 0.04 * rng.standard_normal(images.shape)
    speckled = images.copy()
    for image in speckled:  # isolated single bright pixels are noise, not objects
        ys, xs = rng.integers(0, IMAGE_SIZE, size=(2, 4))
        image[:, ys, xs] = np.array([1.0, 1.0, 0.0])[:, None]
    for variant in (dimmed, speckled):
        assert all(check_batch(np.clip(variant, 0, 1), PROMPTS[::3]))


def corrupt(prompt: str, scene: Scene, kind: str, rng: np.random.Generator) -> np.ndarray:
    shapes = list(scene.shapes)
    spec = parse_prompt(prompt)
    if kind == "wrong colour":
        other = next(c for c in COLOURS if c != shapes[0].colour)
        shapes[0] = replace(shapes[0], colour=other)
    elif kind == "wrong shape":
        other = "triangle" if shapes[0].kind != "triangle" else "square"
        shapes[0] = replace(shapes[0], kind=other)
    elif kind == "missing object":
        shapes.pop()
    elif kind == "extra prompted object":
        obj = spec.objects[0]
        shapes.append(free_shape(scene, obj.shape, obj.colour, rng))
    elif kind == "extra unprompted object":
        prompted = {(o.colour, o.shape) for o in spec.objects}
        colour, shape = next(
            (c, s) for c in COLOURS for s in ("square", "circle") if (c, s) not in prompted
        )
        shapes.append(free_shape(scene, shape, colour, rng))
    elif kind == "noise blob":
        image = render(scene)
        free = free_shape(scene, "square", "green", rng)
        blob = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        y, x = free.y + free.size // 2, free.x + free.size // 2
        for _ in range(60):  # a random walk: an irregular, shapeless blob
            blob[y, x] = True
            dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][int(rng.integers(4))]
            y = int(np.clip(y + dy, free.y, free.y + free.size - 1))
            x = int(np.clip(x + dx, free.x, free.x + free.size - 1))
        image[:, blob] = np.array([0.9, 0.1, 0.9])[:, None]  # magenta-ish: nearest is red/blue
        return image
    else:
        raise AssertionError(kind)
    return render(Scene(tuple(shapes)))


CORRUPTIONS = [
    "wrong colour",
    "wrong shape",
    "missing object",
    "extra prompted object",
    "extra unprompted object",
    "noise blob",
]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_checker_rejects_corrupted_renders(kind: str) -> None:
    rng = np.random.default_rng(CORRUPTIONS.index(kind))
    for prompt in PROMPTS[::6]:
        scene = sample_scene(prompt, rng)
        result = check(corrupt(prompt, scene, kind, rng), prompt)
        assert not result.ok, (kind, prompt)
        assert result.reason.startswith(("missing", "unexpected"))


def test_checker_rejects_swapped_positions_and_swapped_colours() -> None:
    rng = np.random.default_rng(5)
    flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for prompt in [p for p in PROMPTS if parse_prompt(p).category == "position"]:
        relation = parse_prompt(prompt).relation
        assert relation is not None
        opposite = prompt.replace(f" {relation} ", f" {flipped[relation]} ")
        result = check(render(sample_scene(opposite, rng)), prompt)
        assert not result.ok and f"is not {relation}" in result.reason
    for prompt in [p for p in PROMPTS if parse_prompt(p).category == "colour_attribution"]:
        first, second = parse_prompt(prompt).objects
        swapped = f"a {second.colour} {first.shape} and a {first.colour} {second.shape}"
        assert not check(render(sample_scene(swapped, rng)), prompt).ok


def test_training_batches_are_seeded_scaled_and_balanced() -> None:
    batches = training_batches(training_prompts(), batch_size=50, seed=7)
    images, prompts = next(batches)
    assert images.shape == (50, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() == 1.0
    again, prompts_again = next(training_batches(training_prompts(), batch_size=50, seed=7))
    assert torch.equal(images, again) and prompts == prompts_again
    assert all(check_batch((images + 1) / 2, prompts))
    counts = Counter(parse_prompt(p).category for _ in range(4) for p in next(batches)[1])
    assert set(counts) == set(CATEGORIES) and min(counts.values()) > 15


def test_checker_reward_contract() -> None:
    reward = CheckerReward()
    assert isinstance(reward, RewardModel) and reward.differentiable is False
    prompts = ["a red circle", "two blue squares"]
    images, _ = render_prompts(prompts, np.random.default_rng(6))
    scores = reward(torch.from_numpy(images), list(reversed(prompts)) + [])
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    assert scores.tolist() == [0.0, 0.0]
    assert reward(torch.from_numpy(images), prompts).tolist() == [1.0, 1.0]


def test_accuracy_by_category_averages_categories_equally() -> None:
    prompts = ["a red circle", "a blue square", "two red circles"]
    scores = accuracy_by_category(prompts, [True, False, True])
    assert scores == {"single": 0.5, "counting": 1.0, "overall": 0.75}
