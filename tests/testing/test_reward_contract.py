"""assert_reward_contract: passes gdmd's rewards, names the rule a broken reward breaks."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from gdmd.manager import GdmdPluginManager
from gdmd.testing import assert_reward_contract


class MeanReward:
    """A well-behaved reward: mean brightness plus a prompt-length term."""

    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        lengths = torch.tensor([len(p) for p in prompts], dtype=images.dtype)
        return images.mean(dim=(1, 2, 3)) + 0.01 * lengths.to(images.device)


class NoFlag(MeanReward):
    differentiable = None  # type: ignore[assignment]


class ReturnsList(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        return super().__call__(images, prompts).tolist()


class KeepsDim(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        return super().__call__(images, prompts).unsqueeze(1)


class IntegerScores(MeanReward):
    differentiable = False

    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        return (super().__call__(images, prompts) * 100).long()


class WrongDevice(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        return torch.zeros(images.shape[0], device="meta")


class SometimesNaN(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        scores = super().__call__(images, prompts)
        return torch.where(scores > scores.min(), scores, torch.nan)


class InPlace(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        images.clamp_(0.1, 0.9)
        return super().__call__(images, prompts)


class Noisy(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        noise = torch.randn(images.shape[0]) * 0.1
        return super().__call__(images, prompts) + noise


class CentredOnBatch(MeanReward):
    """Subtracts the batch mean: unchanged by a permutation, wrong alone."""

    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        scores = super().__call__(images, prompts)
        return scores - scores.mean()


class ByPosition(MeanReward):
    """Rewards the first images of a batch: wrong under a permutation."""

    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        position = torch.arange(images.shape[0], dtype=images.dtype)
        return super().__call__(images, prompts) - position


class ZipsPrompts(MeanReward):
    """Pairs images with prompts by zip, so a short prompt list drops images silently."""

    differentiable = False

    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        pairs = list(zip(images, prompts, strict=False))
        return torch.stack([image.mean() + 0.01 * len(prompt) for image, prompt in pairs])


class Raises(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        raise RuntimeError("checkpoint not found")


class Detached(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        return super().__call__(images, prompts).detach()


class FlatGradient(MeanReward):
    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        return (images * 0).mean(dim=(1, 2, 3)) + 0.5


class NotDifferentiable(MeanReward):
    """Honest about having no gradient: scores a thresholded image without grad."""

    differentiable = False

    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return (images > 0.5).float().mean(dim=(1, 2, 3))


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (NoFlag(), "must have an attribute `differentiable` (True or False), got None"),
        (ReturnsList(), "returned list, expected a torch.Tensor of shape [3]"),
        (KeepsDim(), "returned shape [3, 1] for 3 images, expected [3]"),
        (IntegerScores(), "returned dtype torch.int64, expected a floating-point dtype"),
        (WrongDevice(), "returned scores on meta, but the images were on cpu"),
        (SometimesNaN(), "returned 1 non-finite score(s) of 3"),
        (InPlace(), "modified the images it scored in place"),
        (Noisy(), "is not deterministic: scoring the same images twice gave scores"),
        (CentredOnBatch(), "image 0 scored"),
        (ByPosition(), "the same 3 images in another order scored differently"),
        (ZipsPrompts(), "accepted 3 images with 2 prompts and returned Tensor [2]"),
        (Raises(), "raised RuntimeError: checkpoint not found (scoring 3 images [3, 32, 32]"),
        (Detached(), "says differentiable = True, but its scores carry no gradient"),
        (FlatGradient(), "the gradient reaching the pixels is zero"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_a_broken_reward_fails_with_a_message_naming_it(reward: object, message: str) -> None:
    with pytest.raises(AssertionError) as caught:
        assert_reward_contract(reward)
    text = str(caught.value)
    assert text.startswith(f"reward {__name__}.{type(reward).__qualname__}"), text
    assert message in text


def test_batch_dependence_is_reported_with_the_scores() -> None:
    with pytest.raises(
        AssertionError, match=r"depends on its batch mates: image 0 scored .* alone"
    ):
        assert_reward_contract(CentredOnBatch(), batch_size=2)


def test_a_plain_function_reward_is_named_by_its_qualified_name() -> None:
    def score(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3)).unsqueeze(0)

    score.differentiable = True  # type: ignore[attr-defined]
    with pytest.raises(AssertionError) as caught:
        assert_reward_contract(score, batch_size=2)
    assert str(caught.value).startswith(
        f"reward {__name__}.test_a_plain_function_reward_is_named_by_its_qualified_name."
        "<locals>.score returned shape [1, 2] for 2 images"
    )


@pytest.mark.parametrize(
    "reward", [MeanReward(), NotDifferentiable()], ids=["differentiable", "not-differentiable"]
)
def test_a_correct_reward_passes(reward: object) -> None:
    assert_reward_contract(reward, image_size=(8, 12), batch_size=4, prompts=list("abcd"))
    assert_reward_contract(reward, batch_size=1)


@pytest.mark.parametrize(
    ("name", "config"), [("brightness", {}), ("brightness", {"target": 0.3}), ("channel", {})]
)
def test_the_built_in_simple_rewards_pass(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: object, name: str, config: dict
) -> None:
    reward = gdmd_pm.registries.rewards.get(name).build(config, gdmd_build_context)
    assert_reward_contract(reward)


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="got 2 prompts for batch_size 3"):
        assert_reward_contract(MeanReward(), prompts=["a", "b"])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        assert_reward_contract(MeanReward(), batch_size=0)
