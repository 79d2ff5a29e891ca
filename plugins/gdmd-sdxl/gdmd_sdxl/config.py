"""Config of the ``sdxl`` model family, importable without torch (registering needs it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gdmd.config import ComponentConfig

#: Name suffixes of the UNet's attention projections that get LoRA adapters: the targets of
#: diffusers' own SDXL LoRA recipe (``examples/dreambooth/train_dreambooth_lora_sdxl.py``).
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


class SDXLConfig(ComponentConfig):
    """Options of the ``sdxl`` model family (Stable Diffusion XL via diffusers)."""

    model: str | None = Field(
        default=None,
        description=(
            "Hub id or local directory of a diffusers StableDiffusionXLPipeline (e.g. "
            "'stabilityai/stable-diffusion-xl-base-1.0'), or a directory written by gdmd's "
            "save_pretrained. Required unless the role has init_from; with init_from it may "
            "only repeat the source's."
        ),
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    variant: str | None = Field(
        default=None,
        description="Weight file variant on the hub, e.g. 'fp16'; None: the default files.",
    )
    vae: str | None = Field(
        default=None,
        description=(
            "Hub id or local directory of an AutoencoderKL to use instead of the pipeline's own "
            "VAE, e.g. 'madebyollin/sdxl-vae-fp16-fix' (decodes in float16 without overflow). "
            "None: the pipeline's VAE. With init_from it may only repeat the source's."
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description=(
            "Dtype of the UNet (and, for a freshly loaded model, of the text encoders and the "
            "VAE; a VAE that asks for float32 in float16 (force_upcast) stays float32). None: "
            "the run's dtype. LoRA matrices are always float32."
        ),
    )
    resolution: int | None = Field(
        default=None,
        ge=8,
        le=8192,
        description=(
            "Image side in pixels (also the original and target size of SDXL's "
            "micro-conditioning); a multiple of the VAE scale factor (8). None: the source "
            "model's with init_from, else the UNet's default (1024 for SDXL)."
        ),
    )
    lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Rank of peft LoRA adapters on the UNet; None: full fine-tuning. Not allowed for "
            "the (frozen) teacher."
        ),
    )
    lora_alpha: float | None = Field(
        default=None, gt=0.0, description="LoRA scale numerator (scale = alpha / rank); None: rank."
    )
    lora_targets: tuple[str, ...] = Field(
        default=DEFAULT_LORA_TARGETS,
        min_length=1,
        description=(
            "Name suffixes of the UNet's nn.Linear / nn.Conv2d modules that get LoRA adapters, "
            "matched at a '.' boundary (default: every attention projection)."
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute UNet activations in backward to save memory."
    )

    @model_validator(mode="after")
    def _lora_fields_agree(self) -> SDXLConfig:
        if self.lora_alpha is not None and self.lora_rank is None:
            raise ValueError("lora_alpha is set but lora_rank is not; set lora_rank to use LoRA")
        if len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError("lora_targets has duplicates")
        return self
