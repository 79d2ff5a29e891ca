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

__all__ = ["AestheticConfig", "AestheticHead", "AestheticScorer", "build_aesthetic"]

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


class AestheticScorer(BatchedReward):
    """``head(normalised CLIP image embedding)``; ignores the prompts (beyond counting them)."""

    def __init__(
        self,
        model: Any,
        head: AestheticHead,
        transform: ResizeCropNormalize,
        *,
        name: str = "aesthetic",
        batch_size: int,
    ) -> None:
        device = next(model.parameters()).device
        super().__init__(name, device, batch_size)
        self.model = model.eval().requires_grad_(False)
        self.dtype = next(model.parameters()).dtype
        self.head = head.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        self.transform = transform

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings ``[B, D]`` in float32 (with grad)."""
        pixels = self.transform(images.float()).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        embeddings = self.model.visual_projection(pooled).float()
        return embeddings / embeddings.norm(dim=-1, keepdim=True)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.head(self.image_embeddings(images))


def build_aesthetic(config: AestheticConfig, ctx: BuildContext) -> AestheticScorer:
    """The ``aesthetic`` reward: the LAION aesthetic predictor v2 (about 1 to 10)."""
    who = "reward 'aesthetic'"
    model = load_clip_model(
        config.model,
        who=who,
        revision=config.revision,
        dtype=torch_dtype(config.dtype),
        device=ctx.device,
    )
    preprocessor = resolve_file(
        config.model,
        "preprocessor_config.json",
        who=who,
        key="model",
        revision=config.revision,
        what=_CLIP_WHAT,
        required=False,
    )
    image_size = int(model.config.vision_config.image_size)
    transform = image_transform_from_processor(preprocessor, image_size, who=who)
    # OpenAI's clip package crops with torchvision's CenterCrop, which rounds the offsets.
    transform = dataclasses.replace(transform, crop_offsets="round")
    path = resolve_file(config.head, AESTHETIC_HEAD_FILE, who=who, key="head", what=_HEAD_WHAT)
    assert path is not None  # required=True: a missing file has raised
    head = AestheticHead(int(model.config.projection_dim))
    load_strictly(head, load_torch_state_dict(path, who=who), who=who, where=path)
    return AestheticScorer(model, head, transform, batch_size=config.batch_size)
