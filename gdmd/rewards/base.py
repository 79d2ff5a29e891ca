"""What every reward model built on a neural scorer shares: input checks and batching.

:class:`BatchedReward` implements the :class:`gdmd.interfaces.RewardModel` call: it checks
the images and prompts (a mistake names the reward), moves the images to the scorer's device,
scores them ``batch_size`` at a time and returns float32 scores on the images' device.
Subclasses write only :meth:`BatchedReward.score_batch`. Imports torch: use it from reward
factories, not from plugin modules.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from gdmd.errors import ContractError

__all__ = ["BatchedReward", "PromptCache"]


class BatchedReward(abc.ABC):
    """Base of the neural rewards: checks inputs, splits into batches, keeps devices straight."""

    #: Whether gradients flow from the score to the pixels (true for every tensor path here).
    differentiable: bool = True

    def __init__(self, name: str, device: torch.device, batch_size: int) -> None:
        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size

    @abc.abstractmethod
    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores ``[b]`` of at most ``batch_size`` images on :attr:`device`."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = list(prompts)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ContractError(f"reward {self.name!r}: expected images [B, 3, H, W], got {shape}")
        if not images.is_floating_point():
            raise ContractError(
                f"reward {self.name!r}: expected float images in [0, 1], got {images.dtype}"
            )
        if len(prompts) != images.shape[0]:
            raise ContractError(
                f"reward {self.name!r}: {images.shape[0]} images but {len(prompts)} prompts"
            )
        if not all(isinstance(p, str) for p in prompts):
            raise ContractError(f"reward {self.name!r}: prompts must be strings")
        pixels = images.to(self.device)
        scores = [
            self.score_batch(pixels[i : i + self.batch_size], prompts[i : i + self.batch_size])
            for i in range(0, len(prompts), self.batch_size)
        ]
        if not scores:
            return torch.zeros(0, device=images.device)
        return torch.cat(scores).float().to(images.device)


class PromptCache:
    """A bounded, least-recently-used cache of per-prompt tensors (text embeddings).

    GDMD scores K targets of the same prompt, and the training prompts repeat: encoding each
    prompt once saves most of the text tower's work. Entries are computed without grad.
    """

    def __init__(self, encode: Callable[[list[str]], torch.Tensor], capacity: int = 4096) -> None:
        self.encode = encode
        self.capacity = capacity
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """The rows for ``prompts``, stacked ``[len(prompts), ...]``."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.entries))
        if missing:
            with torch.no_grad():
                rows = self.encode(missing)
            for prompt, row in zip(missing, rows, strict=True):
                self.entries[prompt] = row
        for prompt in prompts:
            self.entries.move_to_end(prompt)
        while len(self.entries) > max(self.capacity, len(set(prompts))):
            self.entries.popitem(last=False)
        return torch.stack([self.entries[p] for p in prompts])
