"""The toy benchmark's metrics on renders (correct) and corrupted images (caught)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdmd.toy.evaluator import EvaluatorArchitecture, train_evaluator
from gdmd.toy.grammar import CATEGORIES, evaluation_prompts
from gdmd.toy.metrics import evaluate_toy
from gdmd.toy.render import render_prompts


@pytest.fixture(scope="module")
def evaluator():
    small = EvaluatorArchitecture(widths=(8, 16, 16))
    return train_evaluator(steps=60, batch_size=32, seed=0, architecture=small)


def test_renders_score_perfectly_and_noise_fails(evaluator) -> None:
    prompts = evaluation_prompts(4)
    images, _ = render_prompts(prompts, np.random.default_rng(0))
    clean = evaluate_toy(torch.from_numpy(images), prompts, evaluator=evaluator)
    assert clean["accuracy"] == 1.0
    assert {f"accuracy/{c}" for c in CATEGORIES} <= set(clean)
    assert all(clean[f"accuracy/{c}"] == 1.0 for c in CATEGORIES)
    assert clean["diversity"] > 0

    noise = torch.rand(len(prompts), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    broken = evaluate_toy(noise, prompts, evaluator=evaluator)
    assert broken["accuracy"] == 0.0
    assert broken["fd"] > 5 * clean["fd"]

    # One image for every prompt: the collapse shows in FD and diversity.
    collapsed = torch.from_numpy(images[:1]).expand(len(prompts), -1, -1, -1)
    same = evaluate_toy(collapsed, prompts, evaluator=evaluator)
    assert same["diversity"] == pytest.approx(0.0, abs=1e-6)
    assert same["fd"] > clean["fd"]
