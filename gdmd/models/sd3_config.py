"""Config of the ``sd3`` model family, importable without torch (plugins register it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from gdmd.config import ComponentConfig

#: Name suffixes of the transformer's attention projections that get LoRA adapters.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)


class SD3Config(ComponentConfig):
    """Options of the ``sd3`` model family (Stable Diffusion 3 / 3.5 via diffusers)."""

    model: str | None = Field(
        default=None,
        description=(
            "Hub id or local directory of a diffusers SD3/SD3.5 pipeline (e.g. "
            "'stabilityai/stable-diffusion-3-medium-diffusers'), or a directory written by "
            "gdmd's save_pretrained. Required unless the role has init_from; with init_from it "
            "may only repeat the source's."
        ),
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    variant: str | None = Field(
        default=None,
        description="Weight file variant on the hub, e.g. 'fp16'; None: the default files.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description=(
            "Dtype of the transformer (and, for a freshly loaded model, of the shared text "
            "encoders and VAE). None: the run's dtype. LoRA matrices are always float32."
        ),
    )
    resolution: int | None = Field(
        default=None,
        ge=8,
        le=8192,
        description=(
            "Image side in pixels; the latent side is resolution / vae_scale_factor (8 for SD3). "
            "Must be a multiple of vae_scale_factor * patch_size (16). None: the source model's "
            "with init_from, else the pipeline's default (1024 for SD3-Medium)."
        ),
    )
    shift: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        description=(
            "Timestep shift of the FlowMatchingSchedule (places sampler times only). None: the "
            "source model's with init_from, else the scheduler config's (3.0 for SD3)."
        ),
    )
    max_sequence_length: int = Field(
        default=256, ge=1, le=512, description="T5 tokens per prompt (SD3 was trained with 256)."
    )
    drop_t5: bool = Field(
        default=False,
        description=(
            "Load without the T5 encoder (text_encoder_3=None; its embedding slot is zeros), "
            "saving about 9 GB in fp16 at some cost in prompt following."
        ),
    )
    text_encoders: Literal["device", "offload", "none"] = Field(
        default="device",
        description=(
            "Where the shared text encoders (2 x CLIP, T5) live. 'device': on the run's device. "
            "'offload': on the CPU, moved to the device for each encode and back (frees "
            "their memory, about 10 GB for SD3 in bf16, between encodes). 'none': not loaded "
            "at all; every prompt (and the empty prompt, for CFG) must be in prompt_cache. "
            "Set on the model that loads the pipeline; init_from models share its encoders."
        ),
    )
    prompt_cache: str | None = Field(
        default=None,
        description=(
            "Folder of cached prompt conditionings (safetensors, read memory-mapped): each "
            "prompt is encoded once and written there; later encodes, in this run or the "
            "next, read it. Keyed by prompt and encoder identity (pipeline model, revision, "
            "variant, max_sequence_length, drop_t5). For a fixed prompt set. A relative path "
            "is read from the working directory."
        ),
    )
    lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Rank of LoRA adapters on the transformer's attention projections; None: full "
            "fine-tuning. Not allowed for the (frozen) teacher."
        ),
    )
    lora_alpha: float | None = Field(
        default=None, gt=0.0, description="LoRA scale numerator (scale = alpha / rank); None: rank."
    )
    lora_targets: tuple[str, ...] = Field(
        default=DEFAULT_LORA_TARGETS,
        min_length=1,
        description=(
            "Name suffixes of the nn.Linear modules that get LoRA adapters, matched at a '.' "
            "boundary (default: every attention projection of the joint blocks)."
        ),
    )
    share_base: bool | None = Field(
        default=None,
        description=(
            "Put this model's LoRA adapter on the teacher's own frozen transformer instead of "
            "a copy of it (one base in memory; the teacher runs it with adapters disabled). "
            "None: share whenever possible (LoRA, init_from the teacher, the teacher's dtype, "
            "no FSDP); true: share or fail saying why; false: always copy."
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description=(
            "Recompute transformer activations in backward to save memory. On a shared base "
            "it applies to every model sharing it."
        ),
    )

    @model_validator(mode="after")
    def _lora_fields_agree(self) -> SD3Config:
        if self.lora_alpha is not None and self.lora_rank is None:
            raise ValueError("lora_alpha is set but lora_rank is not; set lora_rank to use LoRA")
        if len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError("lora_targets has duplicates")
        if self.text_encoders == "none":
            if self.prompt_cache is None:
                raise ValueError(
                    'text_encoders = "none" needs prompt_cache (the folder the conditionings '
                    "are read from)"
                )
            if not Path(self.prompt_cache).expanduser().is_dir():
                raise ValueError(
                    f'text_encoders = "none" reads every prompt from prompt_cache, but '
                    f"{self.prompt_cache} does not exist (relative paths are read from the "
                    f"working directory, {Path.cwd()}); fill it first with text_encoders = "
                    '"device" or "offload"'
                )
        return self
