"""Options of the ``imagereward`` reward (imports no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gdmd.config import ComponentConfig

#: The hub repository of the official checkpoint and its two files.
HUB_REPO = "THUDM/ImageReward"
CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"


class ImageRewardConfig(ComponentConfig):
    """Options of the ``imagereward`` reward: BLIP image-text features through ImageReward's MLP."""

    model: str | None = Field(
        None,
        description=f"The official checkpoint: {CHECKPOINT}, a directory holding it (and "
        f"{MED_CONFIG}), or a hub id (unset: {HUB_REPO}).",
    )
    med_config: str | None = Field(
        None,
        description=f"Path of the text encoder's {MED_CONFIG} (unset: beside the checkpoint, or "
        "in the hub repository; without one, ImageReward's published values).",
    )
    tokenizer: str = Field(
        "bert-base-uncased",
        min_length=1,
        description="Hub id or local directory of the BERT tokenizer (BLIP's [DEC] and [ENC] "
        "tokens are added when missing).",
    )
    revision: str | None = Field(None, description="Hub revision of `model`.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the reward model's weights."
    )
    batch_size: int = Field(16, ge=1, description="Images scored per forward pass.")
    vision_heads: int = Field(
        16, ge=1, description="Attention heads of the ViT image encoder (ViT-L/16: 16)."
    )
