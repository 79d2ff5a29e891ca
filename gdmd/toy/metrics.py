"""The toy benchmark's metrics (GenEval analogue plus distribution checks).

For images generated from toy prompts: the exact checker's accuracy per category and overall,
a Fréchet distance in the attribute evaluator's feature space against fresh renders of the
same prompts (catches reward hacking and mode collapse), and diversity (mean pairwise feature
distance among images of the same prompt), next to the same diversity of the renders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gdmd.toy.checker import check_batch
from gdmd.toy.evaluator import frechet_distance, load_or_train_evaluator, mean_pairwise_distance
from gdmd.toy.grammar import CATEGORIES, parse_prompt
from gdmd.toy.render import render_prompts


def evaluate_toy(
    images: torch.Tensor, prompts: Sequence[str], seed: int = 0
) -> dict[str, float]:
    """Metrics of ``images`` ``[N, 3, 32, 32]`` in ``[0, 1]`` generated for ``prompts``."""
    images = images.detach().float().cpu()
    ok = np.array(check_batch(images, prompts), dtype=np.float64)
    categories = [parse_prompt(p).category for p in prompts]
    metrics: dict[str, float] = {"accuracy": float(ok.mean())}
    for category in CATEGORIES:
        mask = np.array([c == category for c in categories])
        if mask.any():
            metrics[f"accuracy/{category}"] = float(ok[mask].mean())
    renders, _ = render_prompts(list(prompts), np.random.default_rng(10_000 + seed))
    reference = torch.from_numpy(renders)
    evaluator = load_or_train_evaluator()
    with torch.no_grad():
        feats = evaluator.features(images)
        ref_feats = evaluator.features(reference)
    metrics["fd"] = frechet_distance(feats, ref_feats)
    metrics["diversity"] = mean_pairwise_distance(feats, list(prompts))
    metrics["diversity/renders"] = mean_pairwise_distance(ref_feats, list(prompts))
    return metrics
