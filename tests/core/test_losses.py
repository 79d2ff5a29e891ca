"""The DMD/GDMD math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from gdmd.losses import (
    denoising_loss,
    dmd_gradient,
    gdmd_weights,
    gradient_target_loss,
    group_advantages,
    group_normalise,
    group_target_loss,
    implicit_target,
)


def test_dmd_gradient_hand_computed() -> None:
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    real = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    fake = torch.tensor([[1.0, 3.0], [3.0, 1.0]])
    # sample 0: |x - real| mean = (1 + 2) / 2 = 1.5; sample 1: (1 + 1) / 2 = 1
    expected = torch.tensor([[1.0 / 1.5, 3.0 / 1.5], [2.0, 2.0]])
    assert torch.allclose(dmd_gradient(x, real, fake), expected)


def test_dmd_gradient_normaliser_is_per_sample_over_all_non_batch_dims() -> None:
    x = torch.zeros(2, 3, 2, 2)
    real = torch.ones(2, 3, 2, 2)
    real[1] *= 4.0
    fake = real + 2.0
    g = dmd_gradient(x, real, fake)
    assert g.shape == x.shape
    assert torch.allclose(g[0], torch.full((3, 2, 2), 2.0))
    assert torch.allclose(g[1], torch.full((3, 2, 2), 0.5))


def test_dmd_gradient_does_not_mask_non_finite_values() -> None:
    x = torch.ones(1, 4)
    # x equals the teacher's prediction: the normaliser is zero, the gradient must not be hidden
    g = dmd_gradient(x, x.clone(), x + 1.0)
    assert not torch.isfinite(g).any()


def test_gradient_target_loss_value_and_gradient_is_g_over_n() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    g = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -3.0]])
    target = implicit_target(x, g)
    loss = gradient_target_loss(x, target)
    # 0.5 * mean(g^2) = 0.5 * (0.25 + 1 + 4 + 1 + 0 + 9) / 6
    assert loss.item() == pytest.approx(0.5 * 15.25 / 6)
    loss.backward()
    assert torch.allclose(x.grad, g / 6)


def test_gradient_target_loss_weights() -> None:
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    target = torch.zeros(2, 2)
    plain = gradient_target_loss(x, target)
    assert gradient_target_loss(x, target, torch.ones(2)).item() == pytest.approx(plain.item())
    # per-sample: 0.5 * 1 = 0.5 and 0.5 * 4 = 2 -> weights (2, 0.5): (1 + 1) / 2
    weighted = gradient_target_loss(x, target, torch.tensor([2.0, 0.5]))
    assert weighted.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        gradient_target_loss(x, target, torch.ones(3))


def test_gradient_target_loss_is_float32_for_half_inputs() -> None:
    x = torch.ones(2, 2, dtype=torch.bfloat16)
    assert gradient_target_loss(x, torch.zeros(2, 2, dtype=torch.bfloat16)).dtype == torch.float32


def test_group_target_loss_matches_mean_of_weighted_terms() -> None:
    x = torch.tensor([[0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, -2.0]]])
    weights = torch.tensor([[2.0, 1.0, -1.0]])
    loss = group_target_loss(x, targets, weights)
    # terms: 0.5*1 = 0.5, 0.5*2 = 1, 0.5*2 = 1 -> (2*0.5 + 1 - 1) / 3
    assert loss.item() == pytest.approx(1.0 / 3)
    loss.backward()
    # d/dx of w_k * 0.5 * mean((x - t_k)^2) = w_k (x - t_k) / 2, averaged over K = 3
    expected = (2 * (x - targets[0, 0]) + (x - targets[0, 1]) - (x - targets[0, 2])) / 2 / 3
    assert torch.allclose(x.grad, expected.detach())


def test_group_target_loss_with_k1_equals_gradient_target_loss() -> None:
    x = torch.randn(3, 2, 4)
    t = torch.randn(3, 2, 4)
    a = group_target_loss(x, t.unsqueeze(1), torch.ones(3, 1))
    assert a.item() == pytest.approx(gradient_target_loss(x, t).item())
    with pytest.raises(ValueError, match="targets must have shape"):
        group_target_loss(x, t, torch.ones(3, 1))


def test_group_advantages_hand_computed() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    adv = group_advantages(rewards, clip=1.0)
    std = math.sqrt(1.25)  # population std of 1, 2, 3, 4
    expected0 = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-6)
    assert torch.allclose(adv[0], expected0.clamp(-1, 1))
    assert torch.equal(adv[1], torch.zeros(4))
    wide = group_advantages(rewards, clip=2.0)
    assert torch.allclose(wide[0], expected0.clamp(-2, 2) / 2)
    assert wide.abs().max() <= 1.0
    with pytest.raises(ValueError, match="clip must be positive"):
        group_advantages(rewards, clip=0.0)


def test_group_normalise_and_weights() -> None:
    z = group_normalise(torch.tensor([[0.0, 10.0]]))
    assert torch.allclose(z, torch.tensor([[-1.0, 1.0]]), atol=1e-5)
    w = gdmd_weights(torch.tensor([[-1.0, 0.0, 1.0]]), alpha=1.0, beta=1.0)
    assert torch.equal(w, torch.tensor([[0.0, 1.0, 2.0]]))
    w = gdmd_weights(torch.tensor([[-1.0, 1.0]]), alpha=1.0, beta=2.0)
    assert torch.equal(w, torch.tensor([[-1.0, 3.0]]))


def test_denoising_loss() -> None:
    assert denoising_loss(torch.ones(2, 2), torch.zeros(2, 2)).item() == pytest.approx(1.0)
    assert denoising_loss(torch.tensor([3.0]), torch.tensor([1.0])).item() == pytest.approx(4.0)
