"""The frozen parts of an SD3 pipeline shared by every role: text encoders, tokenizers, VAE."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gdmd.errors import ContractError
from gdmd.interfaces import Conditioning
from gdmd.models.sd3.prompt_cache import (
    EncoderIdentity,
    PromptCache,
    PromptCacheError,
    describe_missing,
)


@dataclass(frozen=True)
class ModelRef:
    """Where a set of weights can be loaded from: hub id or absolute local path."""

    model: str
    revision: str | None = None
    variant: str | None = None
    subfolder: str | None = None


@dataclass(eq=False)
class SD3SharedComponents:
    """The frozen parts of an SD3 pipeline, shared by reference between teacher/student/critic.

    ``copy.deepcopy`` returns the same object, so deep-copying an :class:`SD3Model` copies its
    transformer only. Not an ``nn.Module``: these weights are never in a model's ``state_dict``,
    never moved by ``model.to`` and never wrapped by accelerate.
    """

    text_encoder: Any
    text_encoder_2: Any
    text_encoder_3: Any | None
    tokenizer: Any
    tokenizer_2: Any
    tokenizer_3: Any | None
    vae: Any
    scheduler_config: dict[str, Any]
    pipeline: ModelRef
    #: Where conditionings are returned and the encoders run (the models' device).
    compute_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: Whether the conditioning has T5 states (``drop_t5`` false), loaded or not.
    uses_t5: bool = True
    #: ``text_encoders = "offload"``: the encoders wait on the CPU between encodes.
    offload: bool = False
    #: ``prompt_cache``: the folder of cached conditionings, or ``None``.
    cache_root: Path | None = None
    #: Empty-prompt conditioning for CFG, by total sequence length (computed once each).
    uncond_cache: dict[int, Conditioning] = field(default_factory=dict)
    #: The open caches, by T5 length.
    _caches: dict[int, PromptCache] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, Any]) -> SD3SharedComponents:
        return self

    @property
    def device(self) -> torch.device:
        return self.compute_device

    @property
    def has_encoders(self) -> bool:
        """Whether the text encoders are loaded (not with ``text_encoders = "none"``)."""
        return self.text_encoder is not None

    @property
    def clip_length(self) -> int:
        # SD3's CLIP tokenizers pad to 77; without tokenizers (no encoders) that is the length.
        return int(self.tokenizer.model_max_length) if self.tokenizer is not None else 77

    def prompt_cache(self, max_sequence_length: int) -> PromptCache | None:
        """The cache for conditionings of ``max_sequence_length`` T5 tokens, if any."""
        if self.cache_root is None:
            return None
        if max_sequence_length not in self._caches:
            identity = EncoderIdentity(
                self.pipeline.model,
                self.pipeline.revision,
                self.pipeline.variant,
                max_sequence_length,
                self.uses_t5,
            )
            self._caches[max_sequence_length] = PromptCache(self.cache_root, identity)
        return self._caches[max_sequence_length]

    @torch.no_grad()
    def encode(
        self, prompts: list[str], max_sequence_length: int, joint_attention_dim: int
    ) -> Conditioning:
        """SD3's text conditioning, computed as ``StableDiffusion3Pipeline.encode_prompt`` does.

        ``prompt_embeds`` ``[B, 77 + max_sequence_length, joint_attention_dim]``: both CLIPs'
        penultimate hidden states side by side, zero-padded to the T5 width, followed by the T5
        states (zeros without T5). ``pooled_prompt_embeds`` ``[B, 2048]``: both CLIPs'
        projected pooled outputs side by side.

        With a prompt cache, prompts not yet in it are encoded and written to it, and the
        whole batch is read from it; without encoders, a prompt outside it is an error.
        """
        cache = self.prompt_cache(max_sequence_length)
        if cache is None:
            return self._run_encoders(prompts, max_sequence_length, joint_attention_dim)
        missing = list(dict.fromkeys(cache.missing(prompts)))
        if missing:
            if not self.has_encoders:
                raise PromptCacheError(describe_missing(missing, cache))
            cache.add(
                missing, self._run_encoders(missing, max_sequence_length, joint_attention_dim)
            )
        return {k: v.to(self.device) for k, v in cache.lookup(prompts).items()}

    def _run_encoders(
        self, prompts: list[str], max_sequence_length: int, joint_attention_dim: int
    ) -> Conditioning:
        if not self.offload:
            return self._encode(prompts, max_sequence_length, joint_attention_dim)
        encoders = [self.text_encoder, self.text_encoder_2, self.text_encoder_3]
        for encoder in encoders:
            if encoder is not None:
                encoder.to(self.device)
        try:
            return self._encode(prompts, max_sequence_length, joint_attention_dim)
        finally:
            for encoder in encoders:
                if encoder is not None:
                    encoder.to("cpu")

    def _encode(
        self, prompts: list[str], max_sequence_length: int, joint_attention_dim: int
    ) -> Conditioning:
        device = self.device
        hidden, pooled = [], []
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=self.clip_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            out = encoder(ids, output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2].to(self.text_encoder.dtype))
        clip_embeds = torch.cat(hidden, dim=-1)
        if self.text_encoder_3 is None:
            t5_embeds = torch.zeros(
                len(prompts),
                max_sequence_length,
                joint_attention_dim,
                device=device,
                dtype=self.text_encoder.dtype,
            )
        else:
            assert self.tokenizer_3 is not None
            ids = self.tokenizer_3(
                prompts,
                padding="max_length",
                max_length=max_sequence_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            ).input_ids.to(device)
            t5_embeds = self.text_encoder_3(ids)[0].to(self.text_encoder_3.dtype)
        clip_embeds = torch.nn.functional.pad(
            clip_embeds, (0, t5_embeds.shape[-1] - clip_embeds.shape[-1])
        )
        return {
            "prompt_embeds": torch.cat([clip_embeds, t5_embeds], dim=-2),
            "pooled_prompt_embeds": torch.cat(pooled, dim=-1),
        }

    def unconditional(self, sequence_length: int, joint_attention_dim: int) -> Conditioning:
        """The empty prompt's conditioning (batch 1) matching a conditioning's sequence length."""
        if sequence_length not in self.uncond_cache:
            t5_length = sequence_length - self.clip_length
            if t5_length < 1:
                raise ContractError(
                    f"prompt_embeds has {sequence_length} tokens; SD3 conditionings have "
                    f"{self.clip_length} CLIP tokens plus max_sequence_length T5 tokens"
                )
            self.uncond_cache[sequence_length] = self.encode([""], t5_length, joint_attention_dim)
        return self.uncond_cache[sequence_length]


def _straight_through_clamp(x: torch.Tensor) -> torch.Tensor:
    """``clamp(x, 0, 1)`` in the forward pass, identity in the backward pass.

    A hard clamp gives saturated pixels zero gradient, so a reward could never pull them back
    into range; the straight-through version lets the reward's gradient reach them.
    """
    return x + (x.clamp(0.0, 1.0) - x).detach()


class SD3Decoder:
    """The SD3 VAE as a :class:`~gdmd.interfaces.Decoder` (shared by reference, like the VAE).

    ``decode(latents [B, C, h, w]) -> images [B, 3, h * f, w * f]`` float32 in ``[0, 1]``, where
    ``f`` is the VAE scale factor. Differentiable with respect to ``latents``; the final clamp
    is straight-through (see :func:`_straight_through_clamp`).
    """

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def __deepcopy__(self, memo: dict[int, Any]) -> SD3Decoder:
        return self

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 4 or latents.shape[1] != self.vae.config.latent_channels:
            raise ContractError(
                f"SD3Decoder.decode expects latents [B, {self.vae.config.latent_channels}, h, w], "
                f"got {tuple(latents.shape)}"
            )
        config = self.vae.config
        shift_factor = config.shift_factor if config.shift_factor is not None else 0.0
        z = latents / config.scaling_factor + shift_factor
        image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return _straight_through_clamp((image.float() + 1.0) / 2.0)
