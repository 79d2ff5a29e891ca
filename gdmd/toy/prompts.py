"""The toy prompt source: the grammar's training and held-out prompts, and their metrics.

Kept apart from :mod:`gdmd.toy.grammar` (pure Python, imported by the checker) because its
``evaluate`` needs the metrics, which need the checker: the grammar stays at the bottom of the
toy package's imports.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gdmd.toy.grammar import _check_categories, _split, evaluation_prompts
from gdmd.toy.metrics import evaluate_toy


class ToyPrompts:
    """The toy :class:`~gdmd.interfaces.PromptSource`: category-balanced training prompts.

    ``sample`` draws a category uniformly, then one of its unique training prompts uniformly;
    ``evaluation_prompts`` is :func:`evaluation_prompts` with ``eval_per_category``.
    ``categories`` keeps only those categories, for training and evaluation (default: all).
    """

    def __init__(
        self, eval_per_category: int | None = 24, categories: Sequence[str] | None = None
    ) -> None:
        self.eval_per_category = eval_per_category
        self.categories = _check_categories(categories)
        self._training = {c: _split(c, heldout=False) for c in self.categories}

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        """``n`` training prompts drawn with ``generator`` (a torch generator)."""
        device = generator.device
        categories = torch.randint(len(self.categories), (n,), generator=generator, device=device)
        picks = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        prompts = []
        for category_index, u in zip(categories.tolist(), picks.tolist(), strict=True):
            pool = self._training[self.categories[category_index]]
            prompts.append(pool[min(int(u * len(pool)), len(pool) - 1)])
        return prompts

    def evaluation_prompts(self) -> list[str]:
        """The held-out prompts, ``eval_per_category`` from each category."""
        return evaluation_prompts(self.eval_per_category, self.categories)

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        """The toy benchmark's metrics (see :func:`gdmd.toy.metrics.evaluate_toy`)."""
        return evaluate_toy(images, prompts)
