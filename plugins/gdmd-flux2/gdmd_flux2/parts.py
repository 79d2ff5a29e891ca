"""The frozen parts of a FLUX.2 [klein] pipeline and the conventions around them.

Everything here was read from diffusers 0.42's ``Flux2KleinPipeline`` and is pinned by the
plugin's tests against the pipeline itself:

* **Prompt embedding.** Each prompt is wrapped in the Qwen3 chat template (one user turn, the
  generation prompt, ``enable_thinking=False``), tokenised and padded to
  ``max_sequence_length`` (512), run through the Qwen3 causal LM with its attention mask, and
  the hidden states of layers 9, 18 and 27 are stacked per token: ``[B, L, 3 * hidden]``. The
  transformer gets every token, padding included (the pipeline passes it no mask).
* **Latents.** The VAE's latents ``[B, c, H/8, W/8]`` are patchified 2 x 2 into
  ``[B, 4c, H/16, W/16]`` and normalised per channel by the VAE's batch-norm running
  statistics; that is where noise is drawn and where gdmd's samples live.
* **Packing.** The transformer sees the patchified latents as a sequence ``[B, h * w, 4c]``
  (row-major over ``h, w``), with position ids ``(0, row, col, 0)`` per image token and
  ``(0, 0, 0, i)`` per text token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gdmd.errors import ContractError, GdmdError

#: Marker file of a directory written by ``Flux2Model.save_pretrained``.
SAVE_METADATA = "gdmd_flux2.json"
#: Notes written beside an export.
EXPORT_METADATA = "gdmd_export.json"
#: The file of a LoRA in diffusers' format (what ``load_lora_weights`` reads by default).
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
ROLES = ("teacher", "student", "critic")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Flux2LoadError(GdmdError):
    """A FLUX.2 pipeline or a saved gdmd FLUX.2 model could not be found or read."""

    exit_code = 2


class Flux2ConfigError(GdmdError):
    """A ``flux2`` component's options do not fit the role or the model they are used with."""

    exit_code = 2


class Flux2ExportError(GdmdError):
    """A ``flux2`` model cannot be exported in the format asked for."""

    exit_code = 2


@dataclass(frozen=True)
class ModelRef:
    """Where a set of weights can be loaded from: hub id or absolute local path."""

    model: str
    revision: str | None = None
    variant: str | None = None


# -- latent layout -------------------------------------------------------------------------


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """VAE latents ``[B, c, 2h, 2w]`` -> ``[B, 4c, h, w]``: each 2 x 2 patch becomes 4
    channels, ordered channel-major then patch row then patch column (the pipeline's order)."""
    b, c, height, width = latents.shape
    x = latents.reshape(b, c, height // 2, 2, width // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, height // 2, width // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, 4c, h, w]`` -> ``[B, c, 2h, 2w]``."""
    b, c4, height, width = latents.shape
    x = latents.reshape(b, c4 // 4, 2, 2, height, width)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, height * 2, width * 2)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> the transformer's token sequence ``[B, h * w, C]`` (row-major)."""
    b, c, height, width = latents.shape
    return latents.reshape(b, c, height * width).transpose(1, 2)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[B, h * w, C]`` -> ``[B, C, h, w]``."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, height, width)


def image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Position ids ``[h * w, 4]`` of the image tokens: ``(0, row, col, 0)``, row-major."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    zeros = torch.zeros_like(rows)
    return torch.stack([zeros, rows, cols, zeros], dim=1)


def text_ids(length: int, device: torch.device) -> torch.Tensor:
    """Position ids ``[L, 4]`` of the text tokens: ``(0, 0, 0, i)``."""
    index = torch.arange(length, device=device)
    zeros = torch.zeros_like(index)
    return torch.stack([zeros, zeros, zeros, index], dim=1)


# -- the resolution-dependent shift ----------------------------------------------------------


def empirical_mu(image_tokens: int, steps: int) -> float:
    """FLUX.2's resolution- and step-dependent shift exponent ``mu``.

    Black Forest Labs fitted ``mu`` linearly in the image's token count at 10 and at 200
    sampling steps, and interpolate (or extrapolate) linearly in the step count between the
    two fits; above 4,300 tokens only the 200-step fit is used. (The formula of the flux2
    reference code's ``compute_empirical_mu``, which diffusers' pipeline uses.)
    """
    fit_200 = 0.00016927 * image_tokens + 0.45666666
    if image_tokens > 4300:
        return float(fit_200)
    fit_10 = 8.73809524e-05 * image_tokens + 1.89833333
    slope = (fit_200 - fit_10) / 190.0
    return float(fit_200 + slope * (steps - 200))


def pipeline_shift(scheduler_config: Mapping[str, Any], image_tokens: int, steps: int) -> float:
    """The shift ``s`` (``t' = s t / (1 + (s - 1) t)``) the pipeline's scheduler applies.

    With dynamic shifting the scheduler maps ``t`` to ``e^mu / (e^mu + 1/t - 1)``
    (exponential) or ``mu / (mu + 1/t - 1)`` (linear), which is the same map with
    ``s = e^mu`` or ``s = mu``; without it, the config's fixed ``shift``.
    """
    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    mu = empirical_mu(image_tokens, steps)
    if scheduler_config.get("time_shift_type", "exponential") == "linear":
        return mu
    return math.exp(mu)


# -- frozen components -----------------------------------------------------------------------


@dataclass(eq=False)
class Flux2SharedComponents:
    """The frozen parts of a Flux2KleinPipeline, shared by reference between the roles.

    ``copy.deepcopy`` returns the same object, so deep-copying a model copies its transformer
    only. Not an ``nn.Module``: these weights are never in a model's ``state_dict``, never moved
    by ``model.to`` and never wrapped by accelerate.
    """

    text_encoder: Any
    tokenizer: Any
    vae: Any
    scheduler_config: dict[str, Any]
    pipeline: ModelRef
    #: ``is_distilled`` of the pipeline: a step-distilled checkpoint has no CFG.
    is_distilled: bool = False
    #: Empty-prompt embeddings for CFG, by (sequence length, layers).
    uncond_cache: dict[tuple[int, tuple[int, ...]], torch.Tensor] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, Any]) -> Flux2SharedComponents:
        return self

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @torch.no_grad()
    def encode(
        self, prompts: Sequence[str], max_sequence_length: int, layers: Sequence[int]
    ) -> torch.Tensor:
        """Prompt embeddings ``[B, max_sequence_length, len(layers) * hidden]`` (module doc)."""
        hidden_layers = int(self.text_encoder.config.num_hidden_layers)
        if max(layers) > hidden_layers:
            raise Flux2ConfigError(
                f"text_encoder_layers {list(layers)} name hidden state {max(layers)}, but the "
                f"Qwen3 text encoder has {hidden_layers} layers (hidden states 0 to "
                f"{hidden_layers})"
            )
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=False,
            )
            for prompt in prompts
        ]
        tokens = self.tokenizer(
            texts,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=max_sequence_length,
        )
        device = self.device
        output = self.text_encoder(
            input_ids=tokens["input_ids"].to(device),
            attention_mask=tokens["attention_mask"].to(device),
            output_hidden_states=True,
            use_cache=False,
        )
        # [B, L, H] per layer -> [B, L, layers * H], each token's layers side by side.
        return torch.cat([output.hidden_states[i] for i in layers], dim=-1)

    def unconditional(self, max_sequence_length: int, layers: Sequence[int]) -> torch.Tensor:
        """The empty prompt's embeddings (batch 1): the pipeline's negative prompt ``""``."""
        key = (max_sequence_length, tuple(layers))
        if key not in self.uncond_cache:
            self.uncond_cache[key] = self.encode([""], max_sequence_length, layers)
        return self.uncond_cache[key]


def _straight_through_clamp(x: torch.Tensor) -> torch.Tensor:
    """``clamp(x, 0, 1)`` forward, identity backward, so a reward's gradient still reaches
    saturated pixels."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


class Flux2Decoder:
    """The FLUX.2 VAE as a :class:`~gdmd.interfaces.Decoder`, decoding as the pipeline does.

    ``decode(latents [B, 4c, h, w]) -> images [B, 3, 2 h f, 2 w f]`` float32 in ``[0, 1]``
    (``f``: the VAE scale factor): undo the batch-norm normalisation
    (``z * sqrt(running_var + eps) + running_mean``), unpatchify, ``vae.decode``, map
    ``[-1, 1]`` to ``[0, 1]``. Differentiable; the final clamp is straight-through.
    """

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def __deepcopy__(self, memo: dict[int, Any]) -> Flux2Decoder:
        return self

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        channels = 4 * int(self.vae.config.latent_channels)
        if latents.ndim != 4 or latents.shape[1] != channels:
            raise ContractError(
                f"Flux2Decoder.decode expects patchified latents [B, {channels}, h, w], got "
                f"{tuple(latents.shape)}"
            )
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, torch.float32)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps)
        z = latents.float() * std.to(latents.device, torch.float32) + mean
        image = self.vae.decode(unpatchify(z).to(self.vae.dtype), return_dict=False)[0]
        return _straight_through_clamp((image.float() + 1.0) / 2.0)
