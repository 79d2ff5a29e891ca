"""Options of the ``hpsv2`` reward (imports no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gdmd.config import ComponentConfig

#: The hub repository of the official checkpoints, and each version's file in it.
HUB_REPO = "xswu/HPSv2"
CHECKPOINTS = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}


class HPSv2Config(ComponentConfig):
    """Options of the ``hpsv2`` reward: the cosine of HPS's image and text embeddings."""

    model: str | None = Field(
        None,
        description="The official checkpoint: a .pt file, a directory holding it, or a hub id "
        f"(unset: {HUB_REPO}). Its file name follows `version`.",
    )
    version: Literal["2.0", "2.1"] = Field(
        "2.1", description="HPS version: 2.0 or 2.1 (their scores are not comparable)."
    )
    tokenizer: str = Field(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        min_length=1,
        description="Hub id or local directory of a CLIP tokenizer (HPS uses OpenAI's CLIP BPE, "
        "as the laion ViT-H-14 repository ships it).",
    )
    revision: str | None = Field(None, description="Hub revision of `model`.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the reward model's weights."
    )
    batch_size: int = Field(16, ge=1, description="Images scored per forward pass.")
    vision_heads: int = Field(
        16, ge=1, description="Attention heads of the image tower (ViT-H-14: 16, width 80 each)."
    )
    text_heads: int = Field(16, ge=1, description="Attention heads of the text tower (16).")
