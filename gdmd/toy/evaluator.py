"""Evaluator features for a Frechet distance on the toy domain, and a diversity measure.

The analogue of FID's Inception network: a small attribute classifier trained on clean renders.
It is fully convolutional and labels each cell of an 8x8 grid over the image (4x4 px) with the
colour x shape whose centre lies in it, or "none" (shapes are >= 10 px apart, so no cell holds
two centres). Per-colour x shape counts and a coarse layout follow from the cell labels, and
weight sharing across cells makes this far quicker to learn than predicting counts from the
whole image. Its features (:meth:`AttributeEvaluator.features`) are the channel means of its
last feature map, which say *what* is drawn and how it looks, plus the object probabilities
pooled over the 2x2 quadrants, which say *where*.

It is trained apart from the alignment reward, with a different objective and weights, so a
student optimised against the reward is not measured in the space it was optimised in; a
student that hacks the reward (odd colours, textures, wrong shapes, collapsed layouts) moves
away from fresh renders in this space.

:func:`frechet_distance` is the Frechet distance between Gaussians fitted to two feature sets
(Heusel et al., 2017), with the matrix square root taken by symmetric eigendecomposition;
:func:`mean_pairwise_distance` (and :meth:`AttributeEvaluator.diversity`) measures diversity
as the mean pairwise L2 distance in feature space among samples of the same prompt.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gdmd.errors import ContractError
from gdmd.toy.grammar import COLOURS, SHAPES, all_prompts
from gdmd.toy.render import IMAGE_SIZE, Scene, render_batch, sample_scene
from gdmd.toy.saving import read_network, save_network

FORMAT = "gdmd-toy-evaluator"
FORMAT_VERSION = 1

DEFAULT_STEPS = 800
DEFAULT_BATCH_SIZE = 64
#: The cell grid the classifier labels (cells of IMAGE_SIZE / CELLS px).
CELLS = 8
#: Loss weight of "none" cells, which are ~97% of all cells.
NONE_WEIGHT = 0.1

#: The object classes; cell label ``k + 1`` is ``KINDS[k]``, label 0 is "none".
KINDS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)

ProgressCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class EvaluatorArchitecture:
    """Sizes of the attribute classifier; saved in ``config.json`` beside the weights.

    ``widths``: channels at full resolution, after the first and after the second
    downsampling (each stage has two 3x3 convolutions).
    """

    widths: tuple[int, ...] = (16, 32, 48)


class AttributeEvaluator(nn.Module):
    """The per-cell attribute classifier; :meth:`features` gives ``[B, feature_dim]``."""

    def __init__(self, arch: EvaluatorArchitecture | None = None) -> None:
        super().__init__()
        self.arch = arch or EvaluatorArchitecture()
        full, half, quarter = self.arch.widths
        self.body = nn.Sequential(
            nn.Conv2d(3, full, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(full, half, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(half, half, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(half, quarter, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(quarter, quarter, 3, padding=1),
            nn.GELU(),
        )
        self.cell_head = nn.Conv2d(quarter, len(KINDS) + 1, 1)

    @property
    def feature_dim(self) -> int:
        """Length of a feature vector: channel means plus 2x2-pooled object probabilities."""
        return self.arch.widths[-1] + 4 * len(KINDS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Cell logits ``[B, len(KINDS) + 1, CELLS, CELLS]`` of images ``[B, 3, H, W]``."""
        return self.cell_head(self._feature_map(images))

    def _feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(images * 2.0 - 1.0), CELLS)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        feature_map = self._feature_map(images)
        objects = self.cell_head(feature_map).softmax(1)[:, 1:]
        layout = F.adaptive_avg_pool2d(objects, 2).flatten(1)
        return torch.cat([feature_map.mean((2, 3)), layout], dim=1)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features ``[B, feature_dim]`` (float32, images' device) of ``[B, 3, H, W]`` in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ContractError(f"evaluator expects images [B, 3, H, W], got {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        chunks = [
            self._features(images[i : i + batch_size].to(device).float()).to(images.device)
            for i in range(0, images.shape[0], batch_size)
        ]
        self.train(was_training)
        if not chunks:
            return torch.zeros(0, self.feature_dim, device=images.device)
        return torch.cat(chunks)

    @torch.no_grad()
    def counts(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted count of each of :data:`KINDS`, ``[B, 12]`` (long), from the cell labels."""
        labels = self.eval()(images.float()).argmax(1).flatten(1)
        one_hot = F.one_hot(labels, len(KINDS) + 1)
        return one_hot[..., 1:].sum(1)

    def diversity(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> float:
        """Mean pairwise L2 feature distance among images of the same prompt (all together
        if ``prompts`` is ``None``); see :func:`mean_pairwise_distance`."""
        return mean_pairwise_distance(self.features(images), prompts)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
        save_network(self, self.arch, directory, FORMAT, FORMAT_VERSION)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AttributeEvaluator:
        """Load an evaluator written by :meth:`save_pretrained` (no pickle involved)."""
        fields, weights = read_network(directory, FORMAT, FORMAT_VERSION, "evaluator")
        model = cls(EvaluatorArchitecture(**fields))
        model.load_state_dict(weights)
        return model.eval()


def cell_targets(scenes: Sequence[Scene]) -> torch.Tensor:
    """Cell labels ``[B, CELLS, CELLS]`` (long): ``k + 1`` where a shape of ``KINDS[k]`` has
    its centre, else 0."""
    targets = torch.zeros(len(scenes), CELLS, CELLS, dtype=torch.long)
    cell = IMAGE_SIZE / CELLS
    for i, scene in enumerate(scenes):
        for shape in scene.shapes:
            cx, cy = shape.centre
            row, column = min(int(cy // cell), CELLS - 1), min(int(cx // cell), CELLS - 1)
            targets[i, row, column] = KINDS.index((shape.colour, shape.kind)) + 1
    return targets


def scene_counts(scenes: Sequence[Scene]) -> torch.Tensor:
    """True count of each of :data:`KINDS` per scene, ``[B, 12]`` (long)."""
    counts = torch.zeros(len(scenes), len(KINDS), dtype=torch.long)
    for i, scene in enumerate(scenes):
        for shape in scene.shapes:
            counts[i, KINDS.index((shape.colour, shape.kind))] += 1
    return counts


def train_evaluator(
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    *,
    lr: float = 8e-3,
    architecture: EvaluatorArchitecture | None = None,
) -> AttributeEvaluator:
    """Train the attribute classifier on clean renders of every grammar prompt.

    It is a measuring instrument, not a generator, so it sees held-out prompts too (as
    Inception saw ImageNet). Weighted cross-entropy per cell ("none" cells weigh
    :data:`NONE_WEIGHT`). ``progress(step, metrics)`` every 50 steps and after the last.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError("train_evaluator needs steps >= 1 and batch_size >= 1")
    torch.manual_seed(seed)
    model = AttributeEvaluator(architecture)
    rng = np.random.default_rng(seed)
    prompts = all_prompts()
    class_weights = torch.ones(len(KINDS) + 1)
    class_weights[0] = NONE_WEIGHT
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, min(50, steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        ),
    )
    start = time.perf_counter()
    running: dict[str, float] = {}
    model.train()
    for step in range(steps):
        batch = [prompts[int(k)] for k in rng.integers(len(prompts), size=batch_size)]
        scenes = [sample_scene(p, rng) for p in batch]
        targets = cell_targets(scenes)
        logits = model(torch.from_numpy(render_batch(scenes)))
        loss = F.cross_entropy(logits, targets, weight=class_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        exact = (logits.argmax(1) == targets).flatten(1).all(1).float().mean().item()
        for key, value in {"loss": loss.item(), "all_cells": exact}.items():
            running[key] = value if key not in running else 0.9 * running[key] + 0.1 * value
        if progress is not None and ((step + 1) % 50 == 0 or step + 1 == steps):
            progress(step + 1, {**running, "seconds": time.perf_counter() - start})
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def count_accuracy(
    model: AttributeEvaluator, samples: int = 512, seed: int = 4321
) -> dict[str, float]:
    """Accuracy on fresh renders of the counts read from the cell labels: ``per_count`` (each
    of the 12 colour x shape counts, averaged) and ``all_counts`` (renders with all 12 right)."""
    rng = np.random.default_rng(seed)
    prompts = all_prompts()
    batch = [prompts[int(k)] for k in rng.integers(len(prompts), size=samples)]
    scenes = [sample_scene(p, rng) for p in batch]
    right = model.counts(torch.from_numpy(render_batch(scenes))) == scene_counts(scenes)
    return {
        "per_count": float(right.float().mean()),
        "all_counts": float(right.all(-1).float().mean()),
    }


def _as_float64(features: Any) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu").double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected features [N, D], got shape {array.shape}")
    return array


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Frechet distance between Gaussians fitted to ``[N, D]`` and ``[M, D]`` feature sets.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``. The cross term is
    written with the symmetric ``S_a^1/2 S_b S_a^1/2`` (same trace as ``(S_a S_b)^1/2``) so
    that two symmetric eigendecompositions suffice. Float64 numpy; needs N, M >= 2.
    """
    a, b = _as_float64(features_a), _as_float64(features_b)
    if a.shape[0] < 2 or b.shape[0] < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two feature sets [N>=2, D] of one D, got {a.shape} and {b.shape}")
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    cross = _sqrt_psd(root_a @ cov_b @ root_a)
    value = float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * cross))
    return max(value, 0.0)


def mean_pairwise_distance(features: Any, groups: Sequence[str] | None = None) -> float:
    """Mean pairwise L2 distance between ``[N, D]`` features within each group, averaged
    over the groups with at least two members (one group of all when ``groups`` is None).

    Low values mean samples of a prompt look alike (mode collapse); fresh renders set the
    reference. Returns ``nan`` when no group has two members.
    """
    array = _as_float64(features)
    labels = list(groups) if groups is not None else ["all"] * array.shape[0]
    if len(labels) != array.shape[0]:
        raise ValueError(f"{array.shape[0]} feature rows but {len(labels)} group labels")
    members: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    means = []
    for indices in members.values():
        if len(indices) < 2:
            continue
        group = array[indices]
        distances = np.sqrt(((group[:, None] - group[None]) ** 2).sum(-1))
        n = len(indices)
        means.append(distances.sum() / (n * (n - 1)))
    return float(np.mean(means)) if means else float("nan")


def evaluator_cache_settings(
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    architecture: EvaluatorArchitecture | None = None,
) -> dict[str, Any]:
    """Everything that changes what training produces: the cache key's content."""
    arch = architecture or EvaluatorArchitecture()
    return {"steps": steps, "batch_size": batch_size, "seed": seed, "architecture": asdict(arch)}


def load_or_train_evaluator(
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    *,
    architecture: EvaluatorArchitecture | None = None,
    cache_root: Path | None = None,
) -> AttributeEvaluator:
    """The evaluator trained with these settings, from the cache or trained now.

    A new entry also holds ``accuracy.json`` with :func:`count_accuracy` on fresh renders.
    """
    from gdmd.toy.shipped import shipped_or_cached

    arch = architecture or EvaluatorArchitecture()
    settings = evaluator_cache_settings(steps, batch_size, seed, arch)

    def build(directory: Path) -> None:
        model = train_evaluator(steps, batch_size, seed, progress, architecture=arch)
        model.save_pretrained(directory)
        report = count_accuracy(model)
        (directory / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")

    return AttributeEvaluator.from_pretrained(
        shipped_or_cached("toy-evaluator", settings, build, root=cache_root)
    )
