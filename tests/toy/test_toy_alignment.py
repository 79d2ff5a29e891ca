"""The learned alignment reward: contract, gradients, save/load, and that short training
already ranks true prompts above hard negatives on held-out renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gdmd.errors import CheckpointError, ContractError
from gdmd.interfaces import RewardModel
from gdmd.toy.alignment import (
    AlignmentArchitecture,
    AlignmentModel,
    AlignmentReward,
    load_or_train_alignment_model,
    ranking_accuracy,
    satisfaction_matrix,
    train_alignment_model,
)
from gdmd.toy.grammar import PromptGrammarError, evaluation_prompts
from gdmd.toy.render import render_prompts, sample_scene

TINY = AlignmentArchitecture(
    embed_dim=32, image_widths=(8, 16, 32), text_width=32, text_layers=1, text_heads=2
)


@pytest.fixture(scope="module")
def model() -> AlignmentModel:
    return train_alignment_model(steps=120, batch_size=32, seed=0, architecture=TINY, lr=4e-3)


def test_reward_contract(model: AlignmentModel) -> None:
    reward = AlignmentReward(model)
    assert isinstance(reward, RewardModel) and reward.differentiable is True
    prompts = ["a red circle", "two blue squares", "a red circle left of a blue square"]
    images, _ = render_prompts(prompts, np.random.default_rng(0))
    scores = reward(torch.from_numpy(images), prompts)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and scores.device == torch.device("cpu")
    with pytest.raises(ContractError, match="3 images but 2 prompts"):
        reward(torch.from_numpy(images), prompts[:2])
    with pytest.raises(ContractError, match=r"\[B, 3, H, W\]"):
        reward(torch.from_numpy(images[:, :2]), prompts)
    with pytest.raises(PromptGrammarError, match="purple"):
        reward(torch.from_numpy(images), ["a purple circle", *prompts[1:]])


def test_gradient_reaches_the_pixels_and_not_the_weights(model: AlignmentModel) -> None:
    reward = AlignmentReward(model)
    prompts = ["a green triangle", "three yellow circles"]
    images = torch.from_numpy(render_prompts(prompts, np.random.default_rng(1))[0])
    images.requires_grad_(True)
    reward(images, prompts).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_short_training_ranks_true_prompts_above_hard_negatives(model: AlignmentModel) -> None:
    report = ranking_accuracy(model, evaluation_prompts(6), seed=3)
    assert report.pairs > 100
    assert report.pairwise > 0.6, report  # chance is 0.5


def test_save_and_load_round_trip(model: AlignmentModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = AlignmentModel.from_pretrained(tmp_path / "m")
    assert loaded.arch == TINY
    prompts = ["a red circle and a red square", "a blue circle below a green square"]
    images = torch.from_numpy(render_prompts(prompts, np.random.default_rng(2))[0])
    with torch.no_grad():
        assert torch.allclose(model(images, prompts), loaded(images, prompts))
    with pytest.raises(CheckpointError, match="not a saved alignment model"):
        AlignmentModel.from_pretrained(tmp_path / "missing")


def test_satisfaction_matrix_knows_a_position_render_satisfies_its_and_prompt() -> None:
    scene = sample_scene("a red circle left of a blue square", np.random.default_rng(4))
    texts = [
        "a red circle left of a blue square",
        "a blue square right of a red circle",
        "a red circle and a blue square",
        "a red circle right of a blue square",
        "a red circle",
    ]
    assert satisfaction_matrix([scene], texts).tolist() == [[True, True, True, False, False]]


def test_load_or_train_uses_the_cache(tmp_path: Path) -> None:
    first = load_or_train_alignment_model(
        steps=2, batch_size=4, architecture=TINY, cache_root=tmp_path
    )
    (entry,) = (tmp_path / "toy-alignment").iterdir()
    assert (entry / "ranking.json").is_file() and (entry / ".complete").is_file()
    second = load_or_train_alignment_model(
        steps=2, batch_size=4, architecture=TINY, cache_root=tmp_path
    )
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
