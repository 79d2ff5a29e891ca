"""The frozen parts of an SDXL pipeline shared by every role: text encoders, tokenizers, VAE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gdmd.errors import ContractError
from gdmd.interfaces import Conditioning
from gdmd_sdxl.common import ModelRef


@dataclass(eq=False)
class SDXLSharedComponents:
    """The frozen parts of an SDXL pipeline, shared by reference between teacher/student/critic.

    ``copy.deepcopy`` returns the same object, so deep-copying an :class:`SDXLModel` copies its
    UNet only. Not an ``nn.Module``: these weights are never in a model's ``state_dict``,
    never moved by ``model.to`` and never wrapped by accelerate.
    """

    text_encoder: Any  # CLIPTextModel (CLIP ViT-L)
    text_encoder_2: Any  # CLIPTextModelWithProjection (OpenCLIP ViT-bigG)
    tokenizer: Any
    tokenizer_2: Any
    vae: Any
    scheduler_config: dict[str, Any]
    pipeline: ModelRef
    #: The VAE loaded instead of the pipeline's (``vae = ...``), or ``None``.
    vae_ref: ModelRef | None = None
    #: The pipeline's ``force_zeros_for_empty_prompt``: CFG's unconditional branch is zeros
    #: (SDXL base) instead of the encoded empty prompt.
    force_zeros_for_empty_prompt: bool = True

    def __deepcopy__(self, memo: dict[int, Any]) -> SDXLSharedComponents:
        return self

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder_2.parameters()).device

    @property
    def projection_dim(self) -> int:
        return int(self.text_encoder_2.config.projection_dim)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds [B, 77, D1 + D2], pooled [B, P])`` as
        ``StableDiffusionXLPipeline.encode_prompt`` computes them: each CLIP's penultimate
        hidden states side by side, and the second encoder's projected pooled output."""
        device = self.device
        hidden = []
        pooled: torch.Tensor | None = None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            out = encoder(ids, output_hidden_states=True)
            if encoder is self.text_encoder_2:
                pooled = out[0]  # text_embeds: the projected pooled output
            hidden.append(out.hidden_states[-2])
        assert pooled is not None
        embeds = torch.cat(hidden, dim=-1).to(self.text_encoder_2.dtype)
        return embeds, pooled

    def unconditional(self, like: Conditioning) -> Conditioning:
        """CFG's unconditional conditioning for a batch ``like``: zeros (the SDXL pipeline's
        ``force_zeros_for_empty_prompt``) or the empty prompt's embeddings, with ``like``'s
        micro-conditioning (the pipeline's negative time ids default to the positive ones)."""
        embeds, pooled = like["prompt_embeds"], like["pooled_prompt_embeds"]
        batch = embeds.shape[0]
        if self.force_zeros_for_empty_prompt:
            return {
                "prompt_embeds": torch.zeros_like(embeds),
                "pooled_prompt_embeds": torch.zeros_like(pooled),
                "add_time_ids": like["add_time_ids"],
            }
        empty_embeds, empty_pooled = self.encode_text([""])
        return {
            "prompt_embeds": empty_embeds.to(embeds).expand(batch, -1, -1),
            "pooled_prompt_embeds": empty_pooled.to(pooled).expand(batch, -1),
            "add_time_ids": like["add_time_ids"],
        }


def _straight_through_clamp(x: torch.Tensor) -> torch.Tensor:
    """``clamp(x, 0, 1)`` forward, identity backward, so a reward's gradient still reaches
    saturated pixels."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


class SDXLDecoder:
    """The SDXL VAE as a :class:`~gdmd.interfaces.Decoder` (shared by reference, like the VAE).

    ``decode(latents [B, 4, h, w]) -> images [B, 3, 8h, 8w]`` float32 in ``[0, 1]``: the
    pipeline's decode, ``vae.decode(latents / scaling_factor)`` (or, for a VAE with
    ``latents_mean``/``latents_std``, ``latents * std / scaling_factor + mean``), mapped from
    ``[-1, 1]``. Differentiable; the final clamp is straight-through.
    """

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def __deepcopy__(self, memo: dict[int, Any]) -> SDXLDecoder:
        return self

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> what ``vae.decode`` takes, as the SDXL pipeline does it."""
        config = self.vae.config
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            m = torch.tensor(mean).view(shape).to(latents)
            s = torch.tensor(std).view(shape).to(latents)
            return latents * s / config.scaling_factor + m
        return latents / config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        channels = self.vae.config.latent_channels
        if latents.ndim != 4 or latents.shape[1] != channels:
            raise ContractError(
                f"SDXLDecoder.decode expects latents [B, {channels}, h, w], "
                f"got {tuple(latents.shape)}"
            )
        z = self.unscale(latents.float()).to(self.vae.dtype)
        image = self.vae.decode(z, return_dict=False)[0]
        return _straight_through_clamp((image.float() + 1.0) / 2.0)
