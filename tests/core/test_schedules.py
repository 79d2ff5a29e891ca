"""Noise schedules and the renoise sampler against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from gdmd.schedules import FlowMatchingSchedule, RenoiseSampler, VPSchedule


def test_flow_matching_hand_computed() -> None:
    s = FlowMatchingSchedule()
    x0 = torch.tensor([[2.0, -2.0]])
    eps = torch.tensor([[1.0, 1.0]])
    t = torch.tensor([0.25])
    x_t = s.add_noise(x0, eps, t)
    assert torch.allclose(x_t, torch.tensor([[1.75, -1.25]]))
    v = s.training_target(x0, eps, t)
    assert torch.allclose(v, torch.tensor([[-1.0, 3.0]]))
    assert torch.allclose(s.to_x0(x_t, t, v), x0)
    assert torch.allclose(s.from_x0(x_t, t, x0), v)


def test_flow_shift_matches_sd3_formula() -> None:
    s = FlowMatchingSchedule(shift=3.0)
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(s.shift_time(t), torch.tensor([0.0, 0.75, 1.0]))
    with pytest.raises(ValueError, match="shift must be positive"):
        FlowMatchingSchedule(shift=0.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "x0"])
def test_vp_round_trips(prediction_type: str) -> None:
    s = VPSchedule(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_t = s.add_noise(x0, eps, t)
    target = s.training_target(x0, eps, t)
    assert torch.allclose(s.to_x0(x_t, t, target), x0, atol=1e-8)
    assert torch.allclose(s.from_x0(x_t, t, x0), target, atol=1e-8)


def test_vp_alpha_bar_matches_discrete_table() -> None:
    s = VPSchedule()
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    table = torch.cumprod(1 - betas, 0)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(s.alpha_bar(t), table[[0, 999]])
    mid = torch.tensor([10.5 / 999], dtype=torch.float64)
    assert s.alpha_bar(mid).item() == pytest.approx(((table[10] + table[11]) / 2).item())


def test_renoise_uniform_range_and_determinism() -> None:
    sampler = RenoiseSampler(0.2, 0.6)
    a = sampler.sample(1000, 0, torch.Generator().manual_seed(3))
    b = sampler.sample(1000, 0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.min() >= 0.2 and a.max() <= 0.6
    assert a.mean().item() == pytest.approx(0.4, abs=0.01)


def test_renoise_beta_anneals_to_uniform() -> None:
    sampler = RenoiseSampler(0.0, 1.0, beta=(4.0, 1.5), anneal_steps=100)
    assert sampler.shape_at(0) == pytest.approx((4.0, 1.5))
    a, b = sampler.shape_at(50)
    assert a == pytest.approx(2.5) and b == pytest.approx(1.25)
    assert sampler.shape_at(100) is None
    g = torch.Generator().manual_seed(0)
    early = sampler.sample(100_000, 0, g)
    assert early.mean().item() == pytest.approx(4.0 / 5.5, abs=0.005)  # Beta(4, 1.5) mean
    late = sampler.sample(100_000, 200, g)
    assert late.mean().item() == pytest.approx(0.5, abs=0.005)


def test_renoise_rejects_bad_range() -> None:
    with pytest.raises(ValueError, match="need 0 <= low < high <= 1"):
        RenoiseSampler(0.5, 0.5)
