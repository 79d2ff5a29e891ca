"""Samplers written against the DiffusionModel protocol (gdmd.sampling)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from gdmd.interfaces import BuildContext, Conditioning, NoiseSchedule
from gdmd.models.tiny import PixelDecoder, TinyUNetConfig, build_tiny_unet
from gdmd.sampling import consistency_sample, default_timesteps, euler_sample, sample
from gdmd.schedules import FlowMatchingSchedule, VPSchedule


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread only adds contention on the shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeModel:
    """An x0-predictor given by a function of ``(x_t, t)``; records every call."""

    def __init__(
        self,
        predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: NoiseSchedule | None = None,
    ) -> None:
        self.predict = predict
        self.schedule = schedule or FlowMatchingSchedule()
        self.sample_shape = (3, 4, 4)
        self.decoder = PixelDecoder()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, float | None]] = []

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return {"ids": torch.zeros(len(prompts), 1)}

    def __call__(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        self.calls.append((x_t.clone(), t.clone(), guidance_scale))
        return self.predict(x_t, t)


def noise(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


COND = {"ids": torch.zeros(2, 1)}


@pytest.mark.parametrize("schedule", [FlowMatchingSchedule(), VPSchedule()])
def test_euler_sample_of_a_constant_predictor_returns_it_exactly(
    schedule: NoiseSchedule,
) -> None:
    constant = torch.full((2, 3, 4, 4), 0.3)
    model = FakeModel(lambda x_t, t: constant.clone(), schedule)
    out = euler_sample(model, COND, noise(), default_timesteps(10), guidance_scale=4.0)
    assert torch.equal(out, constant)
    assert len(model.calls) == 10 and all(call[2] == 4.0 for call in model.calls)


def test_euler_step_is_the_straight_flow_line() -> None:
    model = FakeModel(lambda x_t, t: 0.5 * x_t)
    x1 = noise()
    euler_sample(model, COND, x1, [1.0, 0.6, 0.2])
    (_, t0, _), (x_mid, t1, _), (x_last, t2, _) = model.calls
    assert t0.tolist() == [1.0, 1.0] and t1.shape == (2,)
    x0_hat = 0.5 * x1
    torch.testing.assert_close(x_mid, x0_hat + 0.6 * (x1 - x0_hat) / 1.0)
    x0_hat = 0.5 * x_mid
    torch.testing.assert_close(x_last, x0_hat + (0.2 / 0.6) * (x_mid - x0_hat))


def test_euler_step_on_a_vp_schedule_keeps_the_implied_noise() -> None:
    schedule = VPSchedule()
    model = FakeModel(lambda x_t, t: torch.zeros_like(x_t), schedule)
    x_start = noise()
    euler_sample(model, COND, x_start, [0.9, 0.4])
    # x0_hat = 0, so eps_hat = x_t / sigma(t) and x_{t'} = sigma(t') eps_hat.
    ratio = schedule.sigma(torch.tensor(0.4)) / schedule.sigma(torch.tensor(0.9))
    torch.testing.assert_close(model.calls[1][0], ratio * x_start)


def test_consistency_sample_renoises_with_the_generator() -> None:
    model = FakeModel(lambda x_t, t: torch.tanh(x_t))
    timesteps = [1.0, 0.75, 0.5, 0.25]
    first = consistency_sample(model, COND, noise(), timesteps, torch.Generator().manual_seed(3))
    again = consistency_sample(model, COND, noise(), timesteps, torch.Generator().manual_seed(3))
    other = consistency_sample(model, COND, noise(), timesteps, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)

    model.calls.clear()
    generator = torch.Generator().manual_seed(3)
    consistency_sample(model, COND, noise(), timesteps, generator)
    replay = torch.Generator().manual_seed(3)
    fresh = torch.randn(2, 3, 4, 4, generator=replay)
    x0_hat = torch.tanh(noise())
    expected = FlowMatchingSchedule().add_noise(x0_hat, fresh, torch.full((2,), 0.75))
    torch.testing.assert_close(model.calls[1][0], expected)
    assert torch.equal(generator.get_state(), _advance(replay, 2))


def _advance(generator: torch.Generator, draws: int) -> torch.Tensor:
    for _ in range(draws):
        torch.randn(2, 3, 4, 4, generator=generator)
    return generator.get_state()


@pytest.mark.parametrize(
    ("timesteps", "message"),
    [
        ([], "empty"),
        ([1.0, 0.0], r"in \(0, 1\]"),
        ([1.2], r"in \(0, 1\]"),
        ([0.5, 0.75], "strictly decreasing"),
    ],
)
def test_bad_timesteps_are_rejected(timesteps: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        euler_sample(FakeModel(lambda x_t, t: x_t), COND, noise(), timesteps)


def test_default_timesteps() -> None:
    torch.testing.assert_close(default_timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    shifted = default_timesteps(4, FlowMatchingSchedule(shift=3.0))
    assert shifted[0] == 1.0 and bool((shifted[1:] > torch.tensor([0.75, 0.5, 0.25])).all())
    with pytest.raises(ValueError, match="at least 1"):
        default_timesteps(0)


def test_sample_draws_noise_from_the_generator() -> None:
    config = TinyUNetConfig(
        image_size=8, channels=(8, 16), text_width=16, text_layers=1, heads=2, max_tokens=8
    )
    ctx = BuildContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
    model = build_tiny_unet(config, ctx)
    prompts = ["a red circle", "two blue squares"]
    first = sample(model, prompts, 3, 2.0, torch.Generator().manual_seed(1))
    again = sample(model, prompts, 3, 2.0, torch.Generator().manual_seed(1))
    other = sample(model, prompts, 3, 2.0, torch.Generator().manual_seed(2))
    assert first.shape == (2, 3, 8, 8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    given = sample(model, prompts, 99, 2.0, torch.Generator().manual_seed(1), [1.0, 2 / 3, 1 / 3])
    torch.testing.assert_close(given, first)
