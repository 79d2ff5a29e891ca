"""The toy prompt source: the grammar's training and held-out prompts, and their metrics.

Kept apart from :mod:`gdmd.toy.grammar` (pure Python, imported by the checker) because its
``evaluate`` needs the metrics, which need the checker: the grammar stays at the bottom of the
toy package's imports.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gdmd.toy.grammar import (
    _check_categories,
    _split,
    evaluation_prompts,
    is_validation,
    validation_prompts,
)
from gdmd.toy.metrics import evaluate_toy


class ToyPrompts:
    """The toy :class:`~gdmd.interfaces.PromptSource`: category-balanced training prompts.

    ``sample`` draws a category uniformly, then one of its unique training prompts uniformly;
    ``evaluation_prompts`` is :func:`evaluation_prompts` with ``eval_per_category``.
    ``categories`` keeps only those categories, for training and evaluation (default: all).
    ``split = "validation"``: ``evaluation_prompts`` lists validation prompts instead (carved
    out of the training split, see :func:`gdmd.toy.grammar.is_validation`) and ``sample``
    never draws them, so tuning never touches the evaluation prompts.
    """

    def __init__(
        self,
        eval_per_category: int | None = 24,
        categories: Sequence[str] | None = None,
        split: str = "evaluation",
    ) -> None:
        if split not in ("evaluation", "validation"):
            raise ValueError(f'split must be "evaluation" or "validation", got {split!r}')
        self.eval_per_category = eval_per_category
        self.categories = _check_categories(categories)
        self.split = split
        self._training = {
            c: [
                p for p in _split(c, heldout=False) if split == "evaluation" or not is_validation(p)
            ]
            for c in self.categories
        }

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
        """The held-out (or validation) prompts, ``eval_per_category`` from each category."""
        if self.split == "validation":
            return validation_prompts(self.eval_per_category, self.categories)
        return evaluation_prompts(self.eval_per_category, self.categories)

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        """The toy benchmark's metrics (see :func:`gdmd.toy.metrics.evaluate_toy`)."""
        return evaluate_toy(images, prompts)
