"""What the ``sdxl`` tests share: a tiny random-weight SDXL pipeline built in code and saved
(offline), and a plugin manager that knows the ``sdxl`` family. A module with a unique name,
not a conftest, so it cannot clash with another plugin's test helpers."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any hub import: a failed lookup must not wait on DNS

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

#: The tiny pipeline's latent side and VAE scale factor: 16 px images, 4 x 8 x 8 latents.
LATENT_SIDE, VAE_FACTOR = 8, 2
RESOLUTION = LATENT_SIDE * VAE_FACTOR


def _tiny_clip(tokenizer: Any, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    eos = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=8,
        bos_token_id=int(tokenizer.convert_tokens_to_ids("<|startoftext|>")),
        eos_token_id=eos,  # pooling reads the hidden state at this id
        pad_token_id=eos,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def save_tiny_sdxl_pipeline(directory: Path, **vae_options: Any) -> Path:
    """Build the tiny random-weight SDXL pipeline (seeded) and save it to ``directory``.

    The UNet has SDXL's ``text_time`` added embedding: 6 time ids x 4 + the second encoder's
    projection 8 = 32 features; cross-attention width 16 + 16 (both CLIPs side by side). The
    scheduler is SDXL base's (EulerDiscrete, scaled_linear 0.00085-0.012, 1000 steps).
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from gdmd.testing.tiny_rewards import byte_level_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = byte_level_clip_tokenizer()
    tokenizer_2 = byte_level_clip_tokenizer(pad_token="!")  # SDXL's second tokenizer pads "!"
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIDE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=(2, 2),
        use_linear_projection=True,
        cross_attention_dim=32,
        transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 8,
    )
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16],
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=RESOLUTION,
        # Not 1, so decode's un-scaling is actually tested (SDXL's is 0.13025).
        scaling_factor=vae_options.pop("scaling_factor", 0.5),
        **vae_options,
    )
    pipe: Any = StableDiffusionXLPipeline(
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            timestep_spacing="leading",
        ),
        vae=vae,
        text_encoder=_tiny_clip(tokenizer, with_projection=False),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_clip(tokenizer_2, with_projection=True),
        tokenizer_2=tokenizer_2,
        add_watermarker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def sdxl_plugin_manager() -> Any:
    """gdmd's built-ins plus this plugin, registered in code (no other entry points)."""
    import gdmd_sdxl
    from gdmd.manager import build_plugin_manager

    pm = build_plugin_manager(load_entrypoints=False)
    pm.register(gdmd_sdxl, "gdmd_sdxl")
    return pm
