"""assert_model_contract: passes the tiny-unet family, names what a broken model does."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from gdmd.schedules import FlowMatchingSchedule
from gdmd.testing import assert_model_contract


class Decoder:
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1) / 2).clamp(0, 1)


class LinearModel(nn.Module):
    """A correct model: a 1x1 convolution of x_t plus a prompt-length offset (velocity)."""

    def __init__(self) -> None:
        super().__init__()
        self.schedule = FlowMatchingSchedule()
        self.sample_shape: tuple[int, ...] = (3, 4, 4)
        self.decoder = Decoder()
        self.conv = nn.Conv2d(3, 3, 1)
        self.text = nn.Parameter(torch.full((3,), 0.1))

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"length": torch.tensor([[float(len(p))] for p in prompts])}

    def velocity(self, x_t: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        return self.conv(x_t) + (self.text * length)[:, :, None, None]

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor],
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        x0 = self.schedule.to_x0(x_t, t, self.velocity(x_t, cond["length"]))
        if guidance_scale is None or guidance_scale == 1.0:
            return x0
        uncond = self.schedule.to_x0(x_t, t, self.velocity(x_t, 0 * cond["length"]))
        return uncond + guidance_scale * (x0 - uncond)

    def predict_x0(self, x_t, t, cond, guidance_scale=None):  # type: ignore[no-untyped-def]
        return self(x_t, t, cond, guidance_scale)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()

    def save_pretrained(self, directory: str | Path) -> None:
        torch.save(self.state_dict(), Path(directory) / "model.pt")


class NoSchedule(LinearModel):
    def __init__(self) -> None:
        super().__init__()
        self.schedule = None  # type: ignore[assignment]


class BadShape(LinearModel):
    def __init__(self) -> None:
        super().__init__()
        self.sample_shape = [3, 4, 4]  # type: ignore[assignment]


class SequenceFirst(LinearModel):
    def encode_prompts(self, prompts):  # type: ignore[no-untyped-def]
        return {"length": super().encode_prompts(prompts)["length"].T}


class Flattened(LinearModel):
    def predict_x0(self, x_t, t, cond, guidance_scale=None):  # type: ignore[no-untyped-def]
        return super().predict_x0(x_t, t, cond, guidance_scale).flatten(1)


class InfiniteNearZero(LinearModel):
    def predict_x0(self, x_t, t, cond, guidance_scale=None):  # type: ignore[no-untyped-def]
        return (
            super().predict_x0(x_t, t, cond, guidance_scale) / (t < 0).float()[:, None, None, None]
        )


class EditsInput(LinearModel):
    def predict_x0(self, x_t, t, cond, guidance_scale=None):  # type: ignore[no-untyped-def]
        out = super().predict_x0(x_t, t, cond, guidance_scale)
        x_t.mul_(0.5)
        return out


class DropoutInEval(LinearModel):
    def predict_x0(self, x_t, t, cond, guidance_scale=None):  # type: ignore[no-untyped-def]
        out = super().predict_x0(x_t, t, cond, guidance_scale)
        return nn.functional.dropout(out, 0.5, training=True)


class ForwardDiffers(LinearModel):
    def predict_x0(self, x_t, t, cond, guidance_scale=None):  # type: ignore[no-untyped-def]
        return 2 * super().predict_x0(x_t, t, cond, guidance_scale)


class GuidanceOneIsGuided(LinearModel):
    def forward(self, x_t, t, cond, guidance_scale=None):  # type: ignore[no-untyped-def]
        return super().forward(x_t, t, cond, 2.0 if guidance_scale is None else guidance_scale)


class BatchNormalised(LinearModel):
    def forward(self, x_t, t, cond, guidance_scale=None):  # type: ignore[no-untyped-def]
        out = super().forward(x_t, t, cond, guidance_scale)
        return out - out.mean(dim=0, keepdim=True)


class Frozen(LinearModel):
    def trainable_parameters(self):  # type: ignore[no-untyped-def]
        return iter([])


class OutOfRangeDecoder(LinearModel):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = type("Raw", (), {"decode": lambda self, latents: latents})()


class SavesNothing(LinearModel):
    def save_pretrained(self, directory):  # type: ignore[no-untyped-def]
        pass


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (NoSchedule(), "has schedule None, expected a gdmd.interfaces.NoiseSchedule"),
        (BadShape(), "has sample_shape [3, 4, 4], expected a tuple of positive ints"),
        (SequenceFirst(), "returned conditioning 'length' of shape [1, 2] for 2 prompts"),
        (Flattened(), "returned shape [2, 48] from predict_x0, expected [2, 3, 4, 4]"),
        (InfiniteNearZero(), "returned non-finite values from predict_x0"),
        (EditsInput(), "modified x_t in place in predict_x0"),
        (DropoutInEval(), "is not deterministic: predict_x0 on the same inputs"),
        (ForwardDiffers(), "calling the model and predict_x0 differ by up to"),
        (GuidanceOneIsGuided(), "guidance_scale=1.0 and guidance_scale=None differ"),
        (BatchNormalised(), "predicts sample 0 differently alone and in a batch of 2"),
        (Frozen(), "trainable_parameters() gave no parameters that require grad"),
        (OutOfRangeDecoder(), "'s decoder returned values in ["),
        (SavesNothing(), "save_pretrained wrote nothing into the directory it was given"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_a_broken_model_fails_with_a_message_naming_it(model: nn.Module, message: str) -> None:
    with pytest.raises(AssertionError) as caught:
        assert_model_contract(model)
    text = str(caught.value)
    assert text.startswith(f"model {__name__}.{type(model).__qualname__}"), text
    assert message in text


def test_a_correct_model_passes_and_keeps_its_mode() -> None:
    model = LinearModel().train()
    assert_model_contract(model, batch_size=3, prompts=["a", "bb", "ccc"], guidance_scale=5.0)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_a_teacher_only_model_may_have_no_trainable_parameters() -> None:
    assert_model_contract(Frozen(), trainable=False)


def test_the_tiny_unet_family_passes(gdmd_tiny_teacher: nn.Module) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a second thread only adds contention at this size
    try:
        assert_model_contract(gdmd_tiny_teacher)
    finally:
        torch.set_num_threads(threads)
    assert not gdmd_tiny_teacher.training
