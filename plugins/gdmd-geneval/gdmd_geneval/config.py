"""Options of the ``geneval`` reward and of GenEval evaluation (imports no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gdmd.config import ComponentConfig

#: transformers' Mask2Former with the official evaluator's backbone (Swin-S, COCO instance).
DETECTOR = "facebook/mask2former-swin-small-coco-instance"
#: OpenAI's CLIP ViT-L/14: the weights of the official evaluator's open_clip ``ViT-L-14``
#: with ``pretrained="openai"``.
COLOR_CLIP = "openai/clip-vit-large-patch14"


class GenEvalConfig(ComponentConfig):
    """Options of the ``geneval`` reward: GenEval's verdict on each image (not differentiable)."""

    detector: str = Field(
        DETECTOR,
        min_length=1,
        description="Hub id or local directory of a transformers Mask2Former (COCO instance "
        "segmentation) with its preprocessor_config.json.",
    )
    clip_model: str = Field(
        COLOR_CLIP,
        min_length=1,
        description="Hub id or local directory of the transformers CLIPModel that classifies "
        "colours (with its tokenizer and preprocessor_config.json).",
    )
    metadata: str | None = Field(
        None,
        description="Path of GenEval's evaluation_metadata.jsonl: prompts found there use its "
        "clauses; other prompts are parsed from GenEval's templates.",
    )
    score: Literal["correct", "fraction"] = Field(
        "correct",
        description="'correct': 1 when the image satisfies every clause, else 0; 'fraction': "
        "the fraction of the prompt's clauses it satisfies.",
    )
    threshold: float = Field(
        0.3, ge=0.0, le=1.0, description="Detection score an object needs (GenEval: 0.3)."
    )
    counting_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="Detection score for counting prompts (GenEval: 0.9)."
    )
    max_objects: int = Field(16, ge=1, description="Objects kept per class (GenEval: 16).")
    position_margin: float = Field(
        0.1, ge=0.0, description="Margin of the relative-position rule (GenEval: 0.1)."
    )
    background: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Grey level behind an object's mask when its colour is classified "
        "(GenEval: #999, 0.6).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the detector's and CLIP's weights."
    )
    batch_size: int = Field(4, ge=1, description="Images per detector forward pass.")
