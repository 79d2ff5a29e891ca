"""``aesthetic``: the LAION aesthetic predictor v2 on transformers' CLIP, differentiable.

The predictor of ``christophschuhmann/improved-aesthetic-predictor`` (the "sac+logos+ava1"
head, ``sac+logos+ava1-l14-linearMSE.pth``) is an MLP on the L2-normalised CLIP ViT-L/14 image
embedding. Its published module (``simple_inference.py``'s ``MLP``) is an ``nn.Sequential``
named ``layers``; the ReLUs of the original are commented out, so the head is affine::

    layers.0  Linear(768, 1024)     layers.1  Dropout(0.2)
    layers.2  Linear(1024, 128)     layers.3  Dropout(0.2)
    layers.4  Linear(128, 64)       layers.5  Dropout(0.1)
    layers.6  Linear(64, 16)
    layers.7  Linear(16, 1)

and the checkpoint is that module's plain ``state_dict``: ``layers.{0,2,4,6,7}.{weight,bias}``,
ten tensors. :class:`AestheticHead` has exactly those names, so the file loads strictly.

The official score is ``head(e / |e|)`` with ``e = encode_image(preprocess(image))`` of
OpenAI's ``clip`` package; ``encode_image`` is transformers' ``visual_projection`` of the
vision tower's pooled output. ``preprocess`` is ``Resize(224, bicubic)`` of the shorter side,
torchvision's ``CenterCrop(224)`` and CLIP's mean and std: the processor geometry of the
``clip`` reward with torchvision's crop offsets, done here on tensors so gradients reach the
pixels. The embedding is cast to float32 before the head, as the official script does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from gdmd.interfaces import BuildContext
from gdmd.rewards.aesthetic_config import AESTHETIC_HEAD_FILE, AestheticConfig
from gdmd.rewards.base import BatchedReward
from gdmd.rewards.clip import image_transform_from_processor, load_clip_model
from gdmd.rewards.loading import (
    load_strictly,
    load_torch_state_dict,
    resolve_file,
    torch_dtype,
)
from gdmd.rewards.preprocess import ResizeCropNormalize

__all__ = [
    "AestheticConfig",
    "AestheticHead",
    "AestheticScorer",
    "CLIPImageEmbedder",
    "build_aesthetic",
    "load_clip_image_embedder",
]

_HEAD_WHAT = (
    f"the published {AESTHETIC_HEAD_FILE} (from "
    "github.com/christophschuhmann/improved-aesthetic-predictor) or a directory holding it"
)
_CLIP_WHAT = "a local directory holding a transformers CLIPModel and its preprocessor_config.json"


class AestheticHead(nn.Module):
    """The improved-aesthetic-predictor MLP, with the published module's parameter names."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, input_size]`` normalised embeddings -> ``[B]`` scores."""
        return self.layers(embeddings).squeeze(-1)


class CLIPImageEmbedder:
    """The image side of a transformers ``CLIPModel``: images in ``[0, 1]`` -> L2-normalised
    embeddings, through the tensor version of the model's image processor (differentiable).

    The ``aesthetic`` reward reads these embeddings, and :mod:`gdmd.eval.frechet` measures
    distances between sets of them.
    """

    def __init__(self, model: Any, transform: ResizeCropNormalize) -> None:
        self.model = model.eval().requires_grad_(False)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.transform = transform

    @property
    def dim(self) -> int:
        """The embedding width (the model's ``projection_dim``)."""
        return int(self.model.config.projection_dim)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, dim]`` float32, unit norm (with grad)."""
        pixels = self.transform(images.float().to(self.device)).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        embeddings = self.model.visual_projection(pooled).float()
        return embeddings / embeddings.norm(dim=-1, keepdim=True)


def load_clip_image_embedder(
    source: str,
    *,
    who: str,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    crop_offsets: str = "floor",
) -> CLIPImageEmbedder:
    """A :class:`CLIPImageEmbedder` of a hub id or local CLIP directory, loaded strictly.

    The transform comes from the directory's ``preprocessor_config.json`` (CLIP's standard
    one at the model's image size without it); ``crop_offsets`` is ``"floor"`` for
    transformers' processor, ``"round"`` for torchvision's ``CenterCrop`` (OpenAI's ``clip``
    package). Errors name ``who``.
    """
    model = load_clip_model(
        source, who=who, revision=revision, dtype=dtype, device=device or torch.device("cpu")
    )
    preprocessor = resolve_file(
        source,
        "preprocessor_config.json",
        who=who,
        key="model",
        revision=revision,
        what=_CLIP_WHAT,
        required=False,
    )
    image_size = int(model.config.vision_config.image_size)
    transform = image_transform_from_processor(preprocessor, image_size, who=who)
    return CLIPImageEmbedder(model, dataclasses.replace(transform, crop_offsets=crop_offsets))


class AestheticScorer(BatchedReward):
    """``head(normalised CLIP image embedding)``; ignores the prompts (beyond counting them)."""

    def __init__(
        self,
        embedder: CLIPImageEmbedder,
        head: AestheticHead,
        *,
        name: str = "aesthetic",
        batch_size: int,
    ) -> None:
        super().__init__(name, embedder.device, batch_size)
        self.embedder = embedder
        self.head = head.to(device=embedder.device, dtype=torch.float32)
        self.head.eval().requires_grad_(False)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.head(self.embedder(images))


def build_aesthetic(config: AestheticConfig, ctx: BuildContext) -> AestheticScorer:
    """The ``aesthetic`` reward: the LAION aesthetic predictor v2 (about 1 to 10)."""
    who = "reward 'aesthetic'"
    # OpenAI's clip package crops with torchvision's CenterCrop, which rounds the offsets.
    embedder = load_clip_image_embedder(
        config.model,
        who=who,
        revision=config.revision,
        dtype=torch_dtype(config.dtype),
        device=ctx.device,
        crop_offsets="round",
    )
    path = resolve_file(config.head, AESTHETIC_HEAD_FILE, who=who, key="head", what=_HEAD_WHAT)
    assert path is not None  # required=True: a missing file has raised
    head = AestheticHead(embedder.dim)
    load_strictly(head, load_torch_state_dict(path, who=who), who=who, where=path)
    return AestheticScorer(embedder, head, batch_size=config.batch_size)
