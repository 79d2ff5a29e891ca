"""Options of the ``aesthetic`` reward (LAION aesthetic predictor v2); imports no torch.

They are read when plugins register, so they live apart from :mod:`gdmd.rewards.aesthetic`.
"""

from __future__ import annotations

from pydantic import Field

from gdmd.config import ComponentConfig
from gdmd.rewards.clip_config import Dtype

#: The file name of the published head (improved-aesthetic-predictor, "sac+logos+ava1").
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"


class AestheticConfig(ComponentConfig):
    """Options of the ``aesthetic`` reward: an MLP head on CLIP ViT-L/14 image embeddings."""

    model: str = Field(
        "openai/clip-vit-large-patch14",
        min_length=1,
        description="Hub id or local directory of the CLIPModel whose image embedding the "
        "head reads (the head was trained on OpenAI's ViT-L/14).",
    )
    head: str = Field(
        min_length=1,
        description=f"The MLP head: a {AESTHETIC_HEAD_FILE} file (torch state dict, read "
        "with weights_only=True) or a .safetensors file with the same keys, a directory "
        f"holding {AESTHETIC_HEAD_FILE}, or a hub id of a repository holding it. The "
        "published file is in github.com/christophschuhmann/improved-aesthetic-predictor.",
    )
    revision: str | None = Field(
        None, description="Hub revision of `model` (branch, tag or commit)."
    )
    dtype: Dtype = Field(
        "float32", description="Dtype of the CLIP weights (the head always runs in float32)."
    )
    batch_size: int = Field(16, ge=1, description="Images scored per forward pass.")
