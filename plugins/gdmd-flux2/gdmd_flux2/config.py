"""Options of the ``flux2`` model family (imports no torch, so registering stays cheap)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gdmd.config import ComponentConfig

#: Name suffixes of the transformer's ``nn.Linear`` modules that get LoRA adapters by default:
#: every attention projection of the double-stream blocks (image and text streams) and the
#: fused QKV+MLP input and output projections of the single-stream blocks. The feed-forward
#: layers of the double-stream blocks are left out, as diffusers' own Flux LoRA recipes do.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "to_qkv_mlp_proj",
    "attn.to_out",
)

#: The Qwen3 hidden states Flux2KleinPipeline stacks into one prompt embedding (its
#: ``text_encoder_out_layers`` default), and its prompt length.
PIPELINE_TEXT_LAYERS: tuple[int, ...] = (9, 18, 27)
PIPELINE_MAX_SEQUENCE_LENGTH = 512
#: The pipeline's default number of sampling steps: the step count its resolution-dependent
#: shift (``mu``) is computed for unless ``shift_steps`` says otherwise.
PIPELINE_STEPS = 50


class Flux2Config(ComponentConfig):
    """Options of the ``flux2`` model family (FLUX.2 [klein] via diffusers)."""

    model: str | None = Field(
        default=None,
        description=(
            "Hub id or local directory of a diffusers Flux2KleinPipeline (e.g. "
            "'black-forest-labs/FLUX.2-klein-base-4B'), or a directory written by gdmd's "
            "save_pretrained. Required unless the role has init_from; with init_from it may "
            "only repeat the source's."
        ),
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    variant: str | None = Field(
        default=None, description="Weight file variant on the hub; None: the default files."
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description=(
            "Dtype of the transformer (and, for a freshly loaded model, of the shared Qwen3 "
            "text encoder and VAE). None: the run's dtype. LoRA matrices are always float32."
        ),
    )
    resolution: int | None = Field(
        default=None,
        ge=16,
        le=8192,
        description=(
            "Image side in pixels. Must be a multiple of 2 * vae_scale_factor (16 for FLUX.2): "
            "the VAE's latents are patchified 2 x 2. None: the source model's with init_from, "
            "else the pipeline's default (1024)."
        ),
    )
    shift: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        description=(
            "Timestep shift s of the FlowMatchingSchedule (t' = s t / (1 + (s - 1) t); places "
            "sampler times only). None: the source model's with init_from, else what the "
            "pipeline's scheduler applies at this resolution: exp(mu) for its dynamic "
            "(exponential) shifting, mu from the pipeline's empirical formula for the image's "
            "token count and shift_steps; the scheduler's `shift` without dynamic shifting."
        ),
    )
    shift_steps: int = Field(
        default=50,
        ge=1,
        le=1000,
        description=(
            "Sampling steps the dynamic shift is computed for when `shift` is unset (the "
            "pipeline's mu depends on the step count; 50 is its default num_inference_steps)."
        ),
    )
    max_sequence_length: int = Field(
        default=PIPELINE_MAX_SEQUENCE_LENGTH,
        ge=1,
        le=4096,
        description="Qwen3 tokens per prompt, chat template included (the pipeline's 512).",
    )
    text_encoder_layers: tuple[int, ...] = Field(
        default=PIPELINE_TEXT_LAYERS,
        min_length=1,
        description=(
            "Indices into the Qwen3 encoder's hidden states (0 = the embeddings) stacked into "
            "the prompt embedding; the pipeline's (9, 18, 27). Their count times the encoder's "
            "hidden size must be the transformer's joint_attention_dim."
        ),
    )
    lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Rank of LoRA adapters on the transformer (peft); None: full fine-tuning. Not "
            "allowed for the (frozen) teacher."
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
            "boundary (default: the attention projections of both block kinds)."
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute transformer activations in backward to save memory.",
    )

    @model_validator(mode="after")
    def _fields_agree(self) -> Flux2Config:
        if self.lora_alpha is not None and self.lora_rank is None:
            raise ValueError("lora_alpha is set but lora_rank is not; set lora_rank to use LoRA")
        if len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError("lora_targets has duplicates")
        if any(i < 0 for i in self.text_encoder_layers):
            raise ValueError("text_encoder_layers must be non-negative hidden-state indices")
        return self
