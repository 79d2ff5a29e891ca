"""A learned, differentiable prompt-alignment reward: a tiny CLIP for the toy domain.

The analogue of HPSv2/PickScore/CLIPScore in the benchmark (DESIGN.md section 5). A small conv
image encoder (with coordinate channels, and a spatial rather than pooled read-out, so it can
see *where* things are) and a word-level text encoder (token + position embeddings, a small
transformer, a read-out of every position, so word order matters) map into one space; the score
is their cosine similarity times a learned temperature, as in CLIP (Radford et al., 2021).

Training is contrastive on renders of the *training* prompts only. Besides the other prompts of
the batch, every image gets hard negatives one edit away from its prompt (a colour changed or
swapped between objects, a shape changed, the relation flipped, a count changed, an object
dropped or added; :func:`gdmd.toy.grammar.hard_negatives`), so the model has to learn binding,
position and counting rather than bags of words. A text that the image does satisfy (by the
checker's rules on the scene) is never used as its negative. Renders are lightly augmented
(dimming, blur, noise) so the score stays meaningful on imperfect generated images.

:class:`AlignmentReward` wraps a trained model as a :class:`~gdmd.interfaces.RewardModel`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gdmd.errors import ContractError
from gdmd.toy.checker import scene_satisfies
from gdmd.toy.grammar import (
    CATEGORIES,
    MAX_PROMPT_WORDS,
    VOCABULARY,
    PromptGrammarError,
    canonical,
    evaluation_prompts,
    hard_negatives,
    parse_prompt,
    training_prompts,
)
from gdmd.toy.render import Scene, render_batch, sample_scene
from gdmd.toy.saving import read_network, save_network

FORMAT = "gdmd-toy-alignment"
FORMAT_VERSION = 1

#: Training defaults: about two minutes on one core of the 2-core development machine.
DEFAULT_STEPS = 1000
DEFAULT_BATCH_SIZE = 64

ProgressCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class AlignmentArchitecture:
    """Sizes of the alignment model; saved in ``config.json`` beside the weights."""

    embed_dim: int = 128
    image_widths: tuple[int, ...] = (16, 32, 64)
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocabulary: tuple[str, ...] = field(default=VOCABULARY)
    max_words: int = MAX_PROMPT_WORDS


class _ImageEncoder(nn.Module):
    def __init__(self, widths: Sequence[int], embed_dim: int, grid: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(5, widths[0], 3, padding=1), nn.GELU()]
        previous = widths[0]
        for width in [*widths[1:], widths[-1]]:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GELU()]
            previous = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.head = nn.Linear(previous * grid * grid, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        ys = torch.linspace(-1.0, 1.0, height, device=images.device, dtype=images.dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=images.device, dtype=images.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x, grid_y]).expand(batch, 2, height, width)
        features = self.body(torch.cat([images * 2.0 - 1.0, coords], dim=1))
        return self.head(self.pool(features).flatten(1))


class _TextEncoder(nn.Module):
    def __init__(self, arch: AlignmentArchitecture) -> None:
        super().__init__()
        self.tokens = nn.Embedding(len(arch.vocabulary) + 1, arch.text_width, padding_idx=0)
        self.positions = nn.Parameter(torch.randn(arch.max_words, arch.text_width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            arch.text_width,
            arch.text_heads,
            dim_feedforward=2 * arch.text_width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, arch.text_layers, enable_nested_tensor=False
        )
        self.head = nn.Linear(arch.max_words * arch.text_width, arch.embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        padding = tokens == 0
        hidden = self.tokens(tokens) + self.positions[: tokens.shape[1]]
        hidden = self.transformer(hidden, src_key_padding_mask=padding)
        hidden = hidden.masked_fill(padding[..., None], 0.0)
        return self.head(hidden.flatten(1))


class AlignmentModel(nn.Module):
    """Image and text encoders and a temperature; ``forward(images, prompts) -> score [B]``."""

    def __init__(self, arch: AlignmentArchitecture | None = None) -> None:
        super().__init__()
        self.arch = arch or AlignmentArchitecture()
        self.image_encoder = _ImageEncoder(self.arch.image_widths, self.arch.embed_dim)
        self.text_encoder = _TextEncoder(self.arch)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self._word_ids = {word: i + 1 for i, word in enumerate(self.arch.vocabulary)}

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Word ids ``[N, max_words]`` (0 pads); a word outside the vocabulary is an error."""
        rows = []
        for prompt in prompts:
            words = " ".join(prompt.strip().lower().rstrip(".").split()).split(" ")
            if len(words) > self.arch.max_words:
                raise PromptGrammarError(
                    f"prompt '{prompt}' has {len(words)} words; the alignment model reads "
                    f"at most {self.arch.max_words}"
                )
            unknown = [w for w in words if w not in self._word_ids]
            if unknown:
                raise PromptGrammarError(
                    f"prompt '{prompt}' uses words the alignment model does not know: "
                    f"{', '.join(unknown)}"
                )
            ids = [self._word_ids[w] for w in words]
            rows.append(ids + [0] * (self.arch.max_words - len(ids)))
        return torch.tensor(rows, dtype=torch.long, device=self.logit_scale.device)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``[B, embed_dim]`` of images ``[B, 3, H, W]`` in [0, 1]."""
        return F.normalize(self.image_encoder(images), dim=-1)

    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings ``[N, embed_dim]`` of prompts."""
        return F.normalize(self.text_encoder(self.tokenize(prompts)), dim=-1)

    def scale(self) -> torch.Tensor:
        """The temperature: ``exp(logit_scale)``, kept at most 100 as in CLIP."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score ``[B]``: ``scale * cos(image_i, prompt_i)``."""
        image_embeddings = self.embed_images(images)
        text_embeddings = self.embed_texts(prompts)
        return self.scale() * (image_embeddings * text_embeddings).sum(-1)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
        save_network(self, self.arch, directory, FORMAT, FORMAT_VERSION)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AlignmentModel:
        """Load a model written by :meth:`save_pretrained` (no pickle involved)."""
        fields, weights = read_network(directory, FORMAT, FORMAT_VERSION, "alignment model")
        model = cls(AlignmentArchitecture(**fields))
        model.load_state_dict(weights)
        return model.eval()


class AlignmentReward:
    """The alignment model as a differentiable :class:`~gdmd.interfaces.RewardModel`.

    ``__call__(images [B, 3, H, W] float in [0, 1], prompts) -> float32 [B]`` on the images'
    device: ``scale * cosine`` (roughly -scale..scale; higher is better aligned). The model is
    frozen (no parameter takes grad) but gradients flow to the pixels.
    """

    differentiable = True

    def __init__(self, model: AlignmentModel) -> None:
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ContractError(
                f"toy-alignment reward expects images [B, 3, H, W], got {tuple(images.shape)}"
            )
        if images.shape[0] != len(prompts):
            raise ContractError(
                f"toy-alignment reward got {images.shape[0]} images but {len(prompts)} prompts"
            )
        if self.model.logit_scale.device != images.device:
            self.model.to(images.device)
        return self.model(images.float(), list(prompts)).float()


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random dimming, blur and noise of ``[B, 3, H, W]`` images in [0, 1] (stays in [0, 1])."""
    batch = images.shape[0]
    shape = (batch, 1, 1, 1)
    dim = 0.75 + 0.25 * torch.rand(shape, generator=generator)
    blur_amount = torch.rand(shape, generator=generator) * (
        torch.rand(shape, generator=generator) < 0.3
    )
    noise_level = 0.08 * torch.rand(shape, generator=generator)
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    images = (1 - blur_amount) * images + blur_amount * blurred
    noise = torch.randn(images.shape, generator=generator) * noise_level
    return (images * dim + noise).clamp(0.0, 1.0)


class _NegativePool:
    """Hard negatives per prompt, restricted to ``allowed`` meanings, computed once each."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = {canonical(parse_prompt(p)) for p in allowed}
        self._cache: dict[str, list[str]] = {}

    def __call__(self, prompt: str) -> list[str]:
        if prompt not in self._cache:
            self._cache[prompt] = [
                n for n in hard_negatives(prompt) if canonical(parse_prompt(n)) in self.allowed
            ]
        return self._cache[prompt]


def _object_key(prompt: str) -> tuple[tuple[str, str], ...]:
    spec = parse_prompt(prompt)
    return tuple(sorted((o.colour, o.shape) for o in spec.objects for _ in range(o.count)))


def _scene_key(scene: Scene) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((s.colour, s.kind) for s in scene.shapes))


def satisfaction_matrix(scenes: Sequence[Scene], texts: Sequence[str]) -> np.ndarray:
    """``[len(scenes), len(texts)]`` bool: does scene i satisfy text j (checker rules)?

    Only pairs with the same multiset of objects can match, so texts are grouped by it first.
    """
    by_key: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for j, text in enumerate(texts):
        by_key.setdefault(_object_key(text), []).append(j)
    matrix = np.zeros((len(scenes), len(texts)), dtype=bool)
    for i, scene in enumerate(scenes):
        for j in by_key.get(_scene_key(scene), []):
            matrix[i, j] = scene_satisfies(scene, texts[j])
    return matrix


def _balanced_sampler(
    prompts: Sequence[str], rng: np.random.Generator
) -> Callable[[int], list[str]]:
    by_category: dict[str, list[str]] = {}
    for prompt in dict.fromkeys(prompts):
        by_category.setdefault(parse_prompt(prompt).category, []).append(prompt)
    pools = [by_category[c] for c in CATEGORIES if c in by_category]

    def draw(n: int) -> list[str]:
        return [
            pools[k][int(rng.integers(len(pools[k])))] for k in rng.integers(len(pools), size=n)
        ]

    return draw


def contrastive_loss(
    model: AlignmentModel,
    images: torch.Tensor,
    scenes: Sequence[Scene],
    prompts: Sequence[str],
    negatives: Sequence[Sequence[str]],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE over the batch's prompts plus each image's hard negatives.

    image -> text: each image against every distinct text of the step (its own prompt, the
    other images' prompts, all hard negatives), texts it satisfies other than its own excluded.
    text -> image: each image's prompt against the batch's images, other images that satisfy
    it excluded.
    """
    texts = list(dict.fromkeys([*prompts, *(n for group in negatives for n in group)]))
    column = {text: j for j, text in enumerate(texts)}
    targets = torch.tensor([column[p] for p in prompts])
    satisfied = torch.from_numpy(satisfaction_matrix(scenes, texts))
    rows = torch.arange(len(prompts))
    own = torch.zeros_like(satisfied)
    own[rows, targets] = True

    logits = model.scale() * model.embed_images(images) @ model.embed_texts(texts).T
    image_to_text = logits.masked_fill(satisfied & ~own, float("-inf"))
    loss_i = F.cross_entropy(image_to_text, targets)
    per_prompt = logits[:, targets]  # [image, prompt of image k]
    blocked = satisfied[:, targets] & ~torch.eye(len(prompts), dtype=torch.bool)
    loss_t = F.cross_entropy(per_prompt.masked_fill(blocked, float("-inf")).T, rows)
    with torch.no_grad():
        accuracy = (image_to_text.argmax(1) == targets).float().mean().item()
    loss = 0.5 * (loss_i + loss_t)
    return loss, {"loss": loss.item(), "accuracy": accuracy, "scale": model.scale().item()}


def train_alignment_model(
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    *,
    negatives_per_image: int = 6,
    lr: float = 8e-3,
    prompts: Sequence[str] | None = None,
    architecture: AlignmentArchitecture | None = None,
) -> AlignmentModel:
    """Train an :class:`AlignmentModel` on renders of ``prompts`` (default: the training split).

    ``progress(step, metrics)`` is called every 50 steps and after the last one, with the
    running loss, in-batch accuracy, temperature and elapsed seconds. AdamW with a short
    warm-up and cosine decay. Deterministic given ``seed`` (on one thread count).
    """
    if steps < 1 or batch_size < 2:
        raise ValueError("train_alignment_model needs steps >= 1 and batch_size >= 2")
    torch.manual_seed(seed)  # parameter initialisation
    model = AlignmentModel(architecture)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    pool_prompts = list(prompts) if prompts is not None else training_prompts()
    draw = _balanced_sampler(pool_prompts, rng)
    negative_pool = _NegativePool(set(pool_prompts))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, min(100, steps // 10))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start = time.perf_counter()
    running: dict[str, float] = {}
    model.train()
    for step in range(steps):
        batch_prompts = draw(batch_size)
        scenes = [sample_scene(p, rng) for p in batch_prompts]
        images = augment(torch.from_numpy(render_batch(scenes)), generator)
        negatives = []
        for prompt, scene in zip(batch_prompts, scenes, strict=True):
            candidates = [n for n in negative_pool(prompt) if not scene_satisfies(scene, n)]
            picks = rng.permutation(len(candidates))[:negatives_per_image]
            negatives.append([candidates[k] for k in picks])
        loss, metrics = contrastive_loss(model, images, scenes, batch_prompts, negatives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for key, value in metrics.items():
            running[key] = value if key not in running else 0.9 * running[key] + 0.1 * value
        if progress is not None and ((step + 1) % 50 == 0 or step + 1 == steps):
            progress(step + 1, {**running, "seconds": time.perf_counter() - start})
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@dataclass(frozen=True)
class RankingReport:
    """How often the true prompt outscores its hard negatives on renders.

    ``pairwise``: fraction of (image, negative) pairs ranked right; ``top1``: fraction of images
    whose prompt beats all its negatives; ``by_category``: ``pairwise`` per category.
    """

    pairwise: float
    top1: float
    by_category: dict[str, float]
    pairs: int


@torch.no_grad()
def ranking_accuracy(
    model: AlignmentModel | AlignmentReward,
    prompts: Sequence[str] | None = None,
    seed: int = 1234,
    batch_size: int = 128,
) -> RankingReport:
    """Rank each prompt's render against its hard negatives (default: evaluation prompts).

    Negatives here are every one-edit prompt the render does not satisfy, held-out or not.
    """
    if isinstance(model, AlignmentReward):
        model = model.model
    model = model.eval()
    device = model.logit_scale.device
    prompts = list(prompts) if prompts is not None else evaluation_prompts()
    rng = np.random.default_rng(seed)
    wins: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    top1: list[float] = []
    for begin in range(0, len(prompts), batch_size):
        chunk = prompts[begin : begin + batch_size]
        scenes = [sample_scene(p, rng) for p in chunk]
        image_embeddings = model.embed_images(torch.from_numpy(render_batch(scenes)).to(device))
        for k, (prompt, scene) in enumerate(zip(chunk, scenes, strict=True)):
            negatives = [n for n in hard_negatives(prompt) if not scene_satisfies(scene, n)]
            scores = model.embed_texts([prompt, *negatives]) @ image_embeddings[k]
            beaten = (scores[1:] < scores[0]).float()
            wins[parse_prompt(prompt).category].extend(beaten.tolist())
            top1.append(float(beaten.all()))
    all_wins = [w for ws in wins.values() for w in ws]
    return RankingReport(
        pairwise=float(np.mean(all_wins)),
        top1=float(np.mean(top1)),
        by_category={c: float(np.mean(ws)) for c, ws in wins.items() if ws},
        pairs=len(all_wins),
    )


def alignment_cache_settings(
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    architecture: AlignmentArchitecture | None = None,
) -> dict[str, Any]:
    """Everything that changes what training produces: the cache key's content."""
    arch = architecture or AlignmentArchitecture()
    return {"steps": steps, "batch_size": batch_size, "seed": seed, "architecture": asdict(arch)}


def load_or_train_alignment_model(
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    *,
    architecture: AlignmentArchitecture | None = None,
    cache_root: Path | None = None,
) -> AlignmentModel:
    """The alignment model trained with these settings, from the cache or trained now.

    A new entry also holds ``ranking.json``, the held-out :func:`ranking_accuracy` report.
    """
    from gdmd.toy.shipped import shipped_or_cached

    arch = architecture or AlignmentArchitecture()
    settings = alignment_cache_settings(steps, batch_size, seed, arch)

    def build(directory: Path) -> None:
        model = train_alignment_model(steps, batch_size, seed, progress, architecture=arch)
        model.save_pretrained(directory)
        (directory / "ranking.json").write_text(
            json.dumps(asdict(ranking_accuracy(model)), indent=2) + "\n"
        )

    return AlignmentModel.from_pretrained(
        shipped_or_cached("toy-alignment", settings, build, root=cache_root)
    )
