"""Evaluator features, the Frechet distance and the diversity measure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gdmd.errors import ContractError
from gdmd.toy.evaluator import (
    KINDS,
    AttributeEvaluator,
    EvaluatorArchitecture,
    cell_targets,
    frechet_distance,
    load_or_train_evaluator,
    mean_pairwise_distance,
    scene_counts,
    train_evaluator,
)
from gdmd.toy.grammar import evaluation_prompts
from gdmd.toy.render import Scene, Shape, render_prompts

TINY = EvaluatorArchitecture(widths=(8, 16, 24))
PROMPTS = evaluation_prompts(40)  # 200 prompts


@pytest.fixture(scope="module")
def evaluator() -> AttributeEvaluator:
    return train_evaluator(steps=80, batch_size=32, seed=0, architecture=TINY)


def renders(seed: int) -> torch.Tensor:
    return torch.from_numpy(render_prompts(PROMPTS, np.random.default_rng(seed))[0])


def test_features_contract(evaluator: AttributeEvaluator) -> None:
    features = evaluator.features(renders(0)[:10])
    assert (
        features.shape == (10, evaluator.feature_dim) == (10, 24 + 48)
        and features.dtype == torch.float32
    )
    assert torch.isfinite(features).all()
    with pytest.raises(ContractError):
        evaluator.features(torch.zeros(2, 1, 32, 32))


def test_frechet_distance_closed_forms() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # Independent 1-D Gaussians: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2 per dimension.
    x = rng.standard_normal((4000, 1))
    z = (x - x.mean()) / x.std(ddof=1)
    assert frechet_distance(z, 3.0 * z + 1.0) == pytest.approx(1.0 + 4.0, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a + shift)) == pytest.approx(
        frechet_distance(a + shift, a)
    )
    with pytest.raises(ValueError):
        frechet_distance(a[:1], a)


def test_frechet_distance_grows_with_corruption(evaluator: AttributeEvaluator) -> None:
    reference = evaluator.features(renders(1))
    fresh = evaluator.features(renders(2))
    images = renders(3)
    generator = torch.Generator().manual_seed(0)
    noisy = (images + 0.3 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    recoloured = images[:, [1, 2, 0]]  # red -> blue, green -> red, blue -> green
    assert frechet_distance(reference, reference) < 1e-6
    baseline = frechet_distance(reference, fresh)
    assert frechet_distance(reference, evaluator.features(noisy)) > 2 * baseline
    assert frechet_distance(reference, evaluator.features(recoloured)) > 1.2 * baseline


def test_diversity_drops_under_mode_collapse(evaluator: AttributeEvaluator) -> None:
    prompts = ["a red circle left of a blue square"] * 16 + ["two green triangles"] * 16
    images = torch.from_numpy(render_prompts(prompts, np.random.default_rng(4))[0])
    collapsed = torch.cat([images[:1].expand(16, -1, -1, -1), images[16:17].expand(16, -1, -1, -1)])
    assert evaluator.diversity(collapsed, prompts) == pytest.approx(0.0, abs=1e-5)
    assert evaluator.diversity(images, prompts) > 0.01
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 0.0]])
    assert mean_pairwise_distance(features, ["a", "a", "b", "b"]) == pytest.approx(2.5)
    assert mean_pairwise_distance(features[:2]) == pytest.approx(5.0)
    assert np.isnan(mean_pairwise_distance(features[:2], ["a", "b"]))


def test_save_and_load_round_trip(evaluator: AttributeEvaluator, tmp_path: Path) -> None:
    evaluator.save_pretrained(tmp_path)
    loaded = AttributeEvaluator.from_pretrained(tmp_path)
    images = renders(5)[:8]
    assert torch.allclose(evaluator.features(images), loaded.features(images))


def test_cell_targets_and_counts_follow_the_scene() -> None:
    scene = Scene((Shape("circle", "red", 1, 1, 8), Shape("circle", "red", 20, 20, 10)))
    targets = cell_targets([scene])
    red_circle = KINDS.index(("red", "circle")) + 1
    assert targets[0, 1, 1] == red_circle and targets[0, 6, 6] == red_circle
    assert int((targets > 0).sum()) == 2
    assert scene_counts([scene])[0, red_circle - 1] == 2


def test_load_or_train_uses_the_cache(tmp_path: Path) -> None:
    first = load_or_train_evaluator(steps=2, batch_size=4, architecture=TINY, cache_root=tmp_path)
    (entry,) = (tmp_path / "toy-evaluator").iterdir()
    assert set(json.loads((entry / "accuracy.json").read_text())) == {"per_count", "all_counts"}
    second = load_or_train_evaluator(steps=2, batch_size=4, architecture=TINY, cache_root=tmp_path)
    images = renders(6)[:4]
    assert torch.equal(first.features(images), second.features(images))
