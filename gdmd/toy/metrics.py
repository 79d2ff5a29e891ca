"""The toy benchmark's metrics (GenEval analogue plus distribution checks).

For images generated from toy prompts: the exact checker's accuracy per category and overall
(the mean over categories, as GenEval reports it),
a Fréchet distance in the attribute evaluator's feature space against fresh renders of the
same prompts (catches reward hacking and mode collapse), and diversity (mean pairwise feature
distance among images of the same prompt), next to the same diversity of the renders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gdmd.toy.checker import accuracy_by_category, check_batch
from gdmd.toy.evaluator import (
    AttributeEvaluator,
    frechet_distance,
    load_or_train_evaluator,
    mean_pairwise_distance,
)
from gdmd.toy.render import render_prompts


def evaluate_toy(
    images: torch.Tensor,
    prompts: Sequence[str],
    seed: int = 0,
    evaluator: AttributeEvaluator | None = None,
) -> dict[str, float]:
    """Metrics of ``images`` ``[N, 3, 32, 32]`` in ``[0, 1]`` generated for ``prompts``.

    ``evaluator`` defaults to the cached attribute evaluator (trained on first use).
    """
    images = images.detach().float().cpu()
    scores = accuracy_by_category(list(prompts), check_batch(images, prompts))
    # "accuracy" is GenEval's overall score: the mean of the per-category accuracies.
    metrics: dict[str, float] = {"accuracy": scores.pop("overall")}
    metrics.update({f"accuracy/{category}": value for category, value in scores.items()})
    renders, _ = render_prompts(list(prompts), np.random.default_rng(10_000 + seed))
    reference = torch.from_numpy(renders)
    evaluator = evaluator or load_or_train_evaluator()
    with torch.no_grad():
        feats = evaluator.features(images)
        ref_feats = evaluator.features(reference)
    metrics["fd"] = frechet_distance(feats, ref_feats)
    metrics["diversity"] = mean_pairwise_distance(feats, list(prompts))
    metrics["diversity/renders"] = mean_pairwise_distance(ref_feats, list(prompts))
    return metrics
