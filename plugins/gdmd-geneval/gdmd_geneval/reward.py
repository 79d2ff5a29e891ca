"""The ``geneval`` reward: GenEval's verdict on each image, as a score (not differentiable).

Each prompt is turned into GenEval clauses (:class:`gdmd_geneval.prompts.PromptResolver`:
the ``metadata`` file's entry, else GenEval's prompt templates), the image is judged by
:class:`gdmd_geneval.model.GenEvalEvaluator`, and the score is 1.0 for a correct image and
0.0 otherwise, or with ``score = "fraction"`` the fraction of the prompt's clauses that hold.
Every prompt of a batch is resolved before any model runs, so a prompt the reward cannot read
fails at once, naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gdmd.interfaces import BuildContext
from gdmd.rewards.base import BatchedReward
from gdmd_geneval.config import GenEvalConfig
from gdmd_geneval.model import GenEvalEvaluator, build_evaluator
from gdmd_geneval.prompts import PromptResolver

__all__ = ["GenEvalReward", "build_geneval"]


class GenEvalReward(BatchedReward):
    """GenEval as a reward: ``[B]`` scores in ``[0, 1]``; no gradient reaches the pixels."""

    differentiable = False

    def __init__(
        self,
        evaluator: GenEvalEvaluator,
        resolver: PromptResolver,
        *,
        score: str = "correct",
        device: torch.device | str = "cpu",
        batch_size: int = 4,
    ) -> None:
        super().__init__("geneval", torch.device(device), batch_size)
        if score not in ("correct", "fraction"):
            raise ValueError(f"score must be 'correct' or 'fraction', got {score!r}")
        self.evaluator = evaluator
        self.resolver = resolver
        self.score = score

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        # Every prompt is read (and its objects checked) before any model runs.
        for prompt in prompts:
            if isinstance(prompt, str):
                self.evaluator.check_labels(self.resolver(prompt))
        with torch.no_grad():
            return super().__call__(images.detach(), prompts)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        verdicts = self.evaluator.judge(images, [self.resolver(p) for p in prompts])
        if self.score == "fraction":
            values = [v.fraction for v in verdicts]
        else:
            values = [float(v.correct) for v in verdicts]
        return torch.tensor(values, dtype=torch.float32, device=images.device)


def build_geneval(config: GenEvalConfig, ctx: BuildContext) -> GenEvalReward:
    """The ``geneval`` reward on ``ctx.device``."""
    resolver = PromptResolver(config.metadata)
    return GenEvalReward(
        build_evaluator(config, ctx.device),
        resolver,
        score=config.score,
        device=ctx.device,
        batch_size=config.batch_size,
    )
