"""Options of the CLIP-family rewards (``clip``, ``pickscore``); imports no torch.

They are read when plugins register, so they live apart from :mod:`gdmd.rewards.clip`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gdmd.config import ComponentConfig

#: Dtypes a reward model's weights can be loaded in.
Dtype = Literal["float32", "bfloat16", "float16"]


class CLIPRewardConfig(ComponentConfig):
    """Options shared by the CLIP-family rewards."""

    model: str = Field(min_length=1, description="Hub id or local directory of the CLIPModel.")
    processor: str | None = Field(
        None,
        description="Hub id or local directory of the tokenizer and preprocessor_config.json "
        "(unset: the model's own).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Dtype = Field("float32", description="Dtype of the reward model's weights.")
    batch_size: int = Field(16, ge=1, description="Images scored per forward pass.")


class CLIPScoreConfig(CLIPRewardConfig):
    """Options of the ``clip`` reward (CLIPScore, ``100 * cos``)."""

    model: str = Field(
        "openai/clip-vit-large-patch14",
        min_length=1,
        description="Hub id or local directory of the CLIPModel.",
    )


class PickScoreConfig(CLIPRewardConfig):
    """Options of the ``pickscore`` reward (``logit_scale.exp() * cos``)."""

    model: str = Field(
        "yuvalkirstain/PickScore_v1",
        min_length=1,
        description="Hub id or local directory of the PickScore CLIPModel.",
    )
    processor: str | None = Field(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        description="Hub id or local directory of the tokenizer and preprocessor_config.json "
        "(PickScore uses those of the laion ViT-H-14 it fine-tunes).",
    )
