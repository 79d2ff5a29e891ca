"""``[target] chunk_size`` of ``gdmd``: the same targets and weights, in calls of bounded size."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from gdmd.interfaces import TargetContext, WeightedReward
from gdmd.schedules import FlowMatchingSchedule
from gdmd.targets.chunking import chunked_context
from gdmd.targets.configs import GDMDConfig
from gdmd.targets.gdmd import GDMDTarget

SHAPE = (3, 4, 4)
WEIGHT = torch.randn(3, 3, generator=torch.Generator().manual_seed(9))


def _per_row(x: torch.Tensor, cond: dict, scale: float) -> torch.Tensor:
    # A non-linear map of each row and its conditioning alone, as a model computes.
    mixed = torch.einsum("ij,bjhw->bihw", WEIGHT, x)
    return scale * torch.tanh(mixed + cond["tokens"].view(-1, 1, 1, 1).float() / 10)


class Recorder:
    """Decoder and reward stand-ins that remember the batch sizes they were called with."""

    def __init__(self) -> None:
        self.sizes: dict[str, list[int]] = {"real": [], "fake": [], "decode": [], "reward": []}
        self.differentiable = False

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.sizes["decode"].append(latents.shape[0])
        return torch.sigmoid(latents)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        assert len(prompts) == images.shape[0]
        self.sizes["reward"].append(images.shape[0])
        return images[:, 0].mean(dim=(1, 2)) - images[:, 1].mean(dim=(1, 2))


def _ctx(recorder: Recorder, snapshots: int) -> TargetContext:
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)

    def real_x0(x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        recorder.sizes["real"].append(x_t.shape[0])
        return _per_row(x_t, cond, 0.5) * t.view(-1, 1, 1, 1)

    def fake_x0(x_t: torch.Tensor, t: torch.Tensor, cond: dict, snap: int | None) -> torch.Tensor:
        recorder.sizes["fake"].append(x_t.shape[0])
        return _per_row(x_t, cond, 0.3 if snap is None else 0.1 * (snap + 1))

    cond = {"tokens": torch.arange(x.shape[0]).unsqueeze(1)}
    return TargetContext(
        x=x,
        prompts=[f"prompt {i}" for i in range(x.shape[0])],
        cond_real=cond,
        cond_fake=cond,
        schedule=FlowMatchingSchedule(),
        real_x0=real_x0,
        fake_x0=fake_x0,
        num_critic_snapshots=snapshots,
        sample_t=lambda n: torch.rand(n, generator=generator) * 0.9 + 0.05,
        decoder=recorder,
        rewards=[WeightedReward(label="r", model=recorder)],
        generator=generator,
        step=0,
    )


@pytest.mark.parametrize("vary", ["t", "fake", "both"])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunks_give_the_same_targets_and_weights_in_bounded_calls(vary: str, chunk: int) -> None:
    whole, chunked = Recorder(), Recorder()
    ref = GDMDTarget(GDMDConfig(k=4, vary=vary))(_ctx(whole, snapshots=4))
    out = GDMDTarget(GDMDConfig(k=4, vary=vary, chunk_size=chunk))(_ctx(chunked, snapshots=4))
    torch.testing.assert_close(out.targets, ref.targets, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.weights, ref.weights, rtol=0, atol=1e-5)
    assert ref.weights.std() > 0  # the rewards did rank the targets
    for name, sizes in chunked.sizes.items():
        assert sizes and max(sizes) <= chunk, name
        assert sum(sizes) == sum(whole.sizes[name]), name  # every row evaluated once
    assert max(whole.sizes["real"]) > chunk or chunk == 7


def test_no_chunk_size_leaves_the_context_alone() -> None:
    ctx = _ctx(Recorder(), snapshots=0)
    assert chunked_context(ctx, None) is ctx
    wrapped = chunked_context(ctx, 2)
    assert wrapped.x is ctx.x and wrapped.rewards[0].label == "r"
    assert wrapped.rewards[0].model.differentiable is False  # attributes pass through
    with pytest.raises(ValueError, match="chunk_size"):
        GDMDConfig(chunk_size=0)
