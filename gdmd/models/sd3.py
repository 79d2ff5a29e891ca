"""The Stable Diffusion 3 / 3.5 model family (``kind = "sd3"``): teacher, student and critic.

One :class:`SD3Model` wraps a diffusers ``SD3Transformer2DModel`` (the part that is trained) and
holds the frozen text encoders, tokenizers and VAE of the pipeline in a
:class:`SD3SharedComponents` object. Teacher, student and critic built from one another share
that object *by reference*: only the transformer is ever copied, so a run keeps one set of text
encoders and one VAE in memory however many models it builds.

Conventions, checked against diffusers 0.42 (``StableDiffusion3Pipeline`` and
``FlowMatchEulerDiscreteScheduler``) and pinned by ``tests/models/test_sd3.py``:

* **Noising.** The scheduler mixes ``x_t = (1 - sigma) x0 + sigma noise`` (``scale_noise``), and
  its sigmas *are* gdmd's flow time ``t`` in ``[0, 1]``. The scheduler's ``shift`` only places
  the sampler's sigmas (``sigma' = s sigma / (1 + (s - 1) sigma)``); it never changes the
  noising, which is why :class:`~gdmd.schedules.FlowMatchingSchedule` carries it as a number only.
* **Time input.** The pipeline passes ``timestep = sigma * num_train_timesteps`` (1000) to the
  transformer, so :meth:`SD3Model.predict_x0` passes ``t * 1000`` (kept in float32: in bfloat16
  ``857.7`` would round to ``856``).
* **Output.** The transformer predicts the velocity ``v = noise - x0``: the Euler step is
  ``x_{sigma'} = x_sigma + (sigma' - sigma) v``, which for ``sigma' = 0`` is
  ``x0 = x_t - t v``, exactly :meth:`FlowMatchingSchedule.to_x0`.
* **Guidance.** The pipeline batches ``[uncond, cond]`` and mixes velocities as
  ``v_u + w (v_c - v_u)``; the unconditional input is the empty prompt ``""``. Because
  ``x0 = x_t - t v`` is affine in ``v``, mixing velocities equals mixing x0-predictions.
* **Latents.** ``decode`` undoes the pipeline's latent normalisation
  ``z = latents / scaling_factor + shift_factor`` before ``vae.decode``.

Memory: the transformer copies are the only per-role cost. With LoRA (``lora_rank``) the copy's
base weights are frozen and only the LoRA matrices train; checkpoints (``state_dict``) then hold
only the LoRA matrices, since the frozen base can be reloaded from the model it came from.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gdmd.errors import ContractError, GdmdError
from gdmd.interfaces import BuildContext, Conditioning
from gdmd.models.sd3_config import DEFAULT_LORA_TARGETS, SD3Config
from gdmd.schedules import FlowMatchingSchedule

#: A diffusers ``SD3Transformer2DModel`` and ``StableDiffusion3Pipeline``. Spelled ``Any``:
#: diffusers' lazy module hides its classes from type checkers, and importing diffusers at
#: module level would cost seconds.
SD3Transformer2DModel = Any
StableDiffusion3Pipeline = Any

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "LoRALinear",
    "LoRASpec",
    "ModelRef",
    "SD3Config",
    "SD3ConfigError",
    "SD3Decoder",
    "SD3LoadError",
    "SD3Model",
    "SD3SharedComponents",
    "build_sd3",
    "export_pipeline",
]

#: Name suffixes of the attention projections of SD3's joint (MMDiT) blocks: image-stream
#: ``to_q/k/v``, ``to_out.0`` and text-stream ``add_*_proj``, ``to_add_out``. As suffixes they
#: also match SD3.5's second self-attention (``attn2``).

#: Marker file of a directory written by :meth:`SD3Model.save_pretrained`.
SAVE_METADATA = "gdmd_sd3.json"
LORA_WEIGHTS = "lora.safetensors"
LORA_METADATA = "lora.json"
EXPORT_METADATA = "gdmd_export.json"

ROLES = ("teacher", "student", "critic")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFFLINE_HINT = (
    "If you are offline, set HF_HUB_OFFLINE=1 (so no lookup is attempted) and point `model` at "
    "a local directory holding a diffusers StableDiffusion3Pipeline (model_index.json, "
    "transformer/, vae/, text_encoder*/, tokenizer*/, scheduler/), or at a model already in the "
    "Hugging Face cache."
)


class SD3LoadError(GdmdError):
    """An SD3 pipeline or a saved gdmd SD3 model could not be found or read."""

    exit_code = 2


class SD3ConfigError(GdmdError):
    """An ``sd3`` component's options do not fit the role or the model they are used with."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRASpec:
    """Rank, alpha and target suffixes of the LoRA adapters on one transformer."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(torch.nn.Module):
    """``base(x) + (alpha / rank) * up(down(x))`` around a frozen ``nn.Linear`` (Hu et al., 2021).

    ``up`` starts at zero, so a freshly wrapped layer computes exactly what ``base`` does.
    ``down`` and ``up`` are float32 whatever the base dtype: they are the trained (master)
    weights, and at a learning rate of 1e-6 bfloat16 weights would not move at all.
    """

    def __init__(
        self, base: torch.nn.Linear, rank: int, alpha: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        self.lora_down = torch.nn.Linear(base.in_features, rank, bias=False, dtype=torch.float32)
        self.lora_up = torch.nn.Linear(rank, base.out_features, bias=False, dtype=torch.float32)
        # nn.Linear's own initialisation, drawn from the run's generator so builds are seeded.
        torch.nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5), generator=generator)
        torch.nn.init.zeros_(self.lora_up.weight)
        self.lora_down.to(base.weight.device)
        self.lora_up.to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        delta = self.lora_up(self.lora_down(x.to(self.lora_down.weight.dtype)))
        return out + (self.scale * delta).to(out.dtype)

    def merged(self) -> torch.nn.Linear:
        """A plain ``nn.Linear`` with ``W + scale * up @ down`` (computed in float32)."""
        base = self.base
        merged = torch.nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            delta = self.scale * (self.lora_up.weight.float() @ self.lora_down.weight.float())
            merged.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        return merged.requires_grad_(False)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _replace_module(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _add_lora(transformer: torch.nn.Module, spec: LoRASpec, generator: torch.Generator) -> int:
    """Wrap every ``nn.Linear`` whose name ends with a target; returns how many were wrapped."""
    chosen: list[str] = []
    for target in spec.targets:
        hits = [n for n, m in transformer.named_modules() if _matches(n, target)]
        linear_hits = [n for n in hits if type(transformer.get_submodule(n)) is torch.nn.Linear]
        # A default target may be absent from a given transformer (the last joint block has
        # no text output projection, so a 1-block model has no ``to_add_out`` at all).
        if not linear_hits and target not in DEFAULT_LORA_TARGETS:
            what = "matches no module" if not hits else "matches no nn.Linear module"
            raise SD3ConfigError(
                f"lora_targets entry {target!r} {what} of the SD3 transformer; use suffixes such "
                f"as {', '.join(repr(t) for t in DEFAULT_LORA_TARGETS)}"
            )
        chosen.extend(n for n in linear_hits if n not in chosen)
    for name in chosen:
        base = transformer.get_submodule(name)
        assert isinstance(base, torch.nn.Linear)
        _replace_module(transformer, name, LoRALinear(base, spec.rank, spec.alpha, generator))
    return len(chosen)


def _plain_copy(transformer: SD3Transformer2DModel, merge: bool) -> SD3Transformer2DModel:
    """A deep copy without LoRA wrappers: merged into the weights, or dropped (``merge=False``)."""
    plain = copy.deepcopy(transformer)
    for name, module in list(plain.named_modules()):
        if isinstance(module, LoRALinear):
            _replace_module(plain, name, module.merged() if merge else module.base)
    return plain


def _lora_weights(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param
        for name, param in transformer.named_parameters()
        if ".lora_down." in name or ".lora_up." in name
    }


def _is_lora_key(key: str) -> bool:
    return ".lora_down." in key or ".lora_up." in key


# --------------------------------------------------------------------------------------------
# Shared frozen parts: text encoders, tokenizers, VAE
# --------------------------------------------------------------------------------------------


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
    #: Empty-prompt conditioning for CFG, by total sequence length (computed once each).
    uncond_cache: dict[int, Conditioning] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, Any]) -> SD3SharedComponents:
        return self

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @property
    def clip_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @torch.no_grad()
    def encode(
        self, prompts: list[str], max_sequence_length: int, joint_attention_dim: int
    ) -> Conditioning:
        """SD3's text conditioning, computed as ``StableDiffusion3Pipeline.encode_prompt`` does.

        ``prompt_embeds`` ``[B, 77 + max_sequence_length, joint_attention_dim]``: both CLIPs'
        penultimate hidden states side by side, zero-padded to the T5 width, followed by the T5
        states (zeros without T5). ``pooled_prompt_embeds`` ``[B, 2048]``: both CLIPs'
        projected pooled outputs side by side.
        """
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


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class SD3Model(torch.nn.Module):
    """An SD3 transformer as a gdmd :class:`~gdmd.interfaces.DiffusionModel`.

    The only registered submodule is ``transformer``; the text encoders and the VAE live in
    ``shared`` (:class:`SD3SharedComponents`) and are never copied, saved in ``state_dict`` or
    trained. ``forward`` is :meth:`predict_x0`.

    With LoRA (``lora`` not ``None``), ``state_dict`` holds only the LoRA matrices and
    ``load_state_dict`` expects only those, so checkpoints stay small and frozen base weights
    never enter them.
    """

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        shared: SD3SharedComponents,
        *,
        role: str,
        resolution: int | None = None,
        shift: float | None = None,
        max_sequence_length: int = 256,
        compute_dtype: torch.dtype | None = None,
        base: ModelRef | None = None,
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise SD3ConfigError(f"unknown role {role!r} for an sd3 model; use one of {ROLES}")
        self.transformer = transformer
        self.shared = shared
        self.decoder = SD3Decoder(shared.vae)
        self.role = role
        self.max_sequence_length = max_sequence_length
        self.compute_dtype = compute_dtype or transformer.dtype
        #: Where the transformer's weights below any LoRA can be reloaded from; ``None`` when
        #: they may differ from any saved copy (a fully trainable model, or a copy of one, or
        #: a copy with LoRA merged in).
        self.base = base
        #: The LoRA adapters on the transformer, if any (see :meth:`add_lora`).
        self.lora: LoRASpec | None = None
        self.num_train_timesteps = int(shared.scheduler_config.get("num_train_timesteps", 1000))
        self.schedule = FlowMatchingSchedule(
            shift if shift is not None else float(shared.scheduler_config.get("shift", 1.0))
        )

        config = transformer.config
        self.vae_scale_factor = 2 ** (len(shared.vae.config.block_out_channels) - 1)
        self.patch_size = int(config.patch_size)
        self.resolution = resolution or int(config.sample_size) * self.vae_scale_factor
        multiple = self.vae_scale_factor * self.patch_size
        if self.resolution % multiple:
            raise SD3ConfigError(
                f"resolution {self.resolution} is not a multiple of vae_scale_factor * patch_size "
                f"= {multiple}"
            )
        side = self.resolution // self.vae_scale_factor
        max_patches = config.pos_embed_max_size
        if max_patches is not None and side // self.patch_size > max_patches:
            raise SD3ConfigError(
                f"resolution {self.resolution} needs {side // self.patch_size} patches per side; "
                f"this transformer has position embeddings for at most {max_patches} "
                f"(resolution {max_patches * multiple})"
            )
        self.sample_shape: tuple[int, ...] = (int(config.in_channels), side, side)

        self.register_state_dict_post_hook(_keep_only_lora_weights)
        self.register_load_state_dict_post_hook(_allow_missing_frozen_weights)

    # ---------------------------------------------------------------- DiffusionModel protocol

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Prompts -> ``{"prompt_embeds": [B, 77 + L, D], "pooled_prompt_embeds": [B, P]}``.

        ``L`` is ``max_sequence_length``, ``D`` the transformer's ``joint_attention_dim`` (4096)
        and ``P`` its ``pooled_projection_dim`` (2048). Computed without grad on the shared
        encoders, so any model of one family can use another's conditioning.
        """
        if isinstance(prompts, str):
            raise ContractError("encode_prompts takes a sequence of prompts, not a single string")
        return self.shared.encode(
            list(prompts),
            self.max_sequence_length,
            int(self.transformer.config.joint_attention_dim),
        )

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """x0-prediction ``[B, C, h, w]`` at latents ``x_t`` and flow times ``t`` ``[B]``.

        The transformer gets ``timestep = t * 1000`` and predicts the velocity ``v``;
        ``x0 = x_t - t v``. With ``guidance_scale`` not ``None`` and not 1, the conditional and
        empty-prompt branches run in one batched forward and mix as ``u + w (c - u)``.
        """
        t = self._check_inputs(x_t, t, cond)
        embeds = cond["prompt_embeds"]
        pooled = cond["pooled_prompt_embeds"]
        x_in, t_in = x_t, t
        guided = guidance_scale is not None and guidance_scale != 1.0
        if guided:
            uncond = self.shared.unconditional(
                embeds.shape[1], int(self.transformer.config.joint_attention_dim)
            )
            batch = x_t.shape[0]
            embeds = torch.cat([uncond["prompt_embeds"].to(embeds).expand(batch, -1, -1), embeds])
            pooled = torch.cat(
                [uncond["pooled_prompt_embeds"].to(pooled).expand(batch, -1), pooled]
            )
            x_in, t_in = torch.cat([x_t, x_t]), torch.cat([t, t])
        velocity = self.transformer(
            hidden_states=x_in.to(self.compute_dtype),
            timestep=t_in.float() * self.num_train_timesteps,
            encoder_hidden_states=embeds.to(self.compute_dtype),
            pooled_projections=pooled.to(self.compute_dtype),
            return_dict=False,
        )[0].float()
        if guided:
            assert guidance_scale is not None
            v_uncond, v_cond = velocity.chunk(2)
            velocity = v_uncond + guidance_scale * (v_cond - v_uncond)
        return self.schedule.to_x0(x_t.float(), t.float(), velocity).to(x_t.dtype)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        return self.predict_x0(x_t, t, cond, guidance_scale)

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The LoRA matrices with LoRA, else every transformer weight; nothing for a teacher."""
        return (p for p in self.parameters() if p.requires_grad)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model so :func:`build_sd3` (``model = directory``) loads it again.

        Layout: ``gdmd_sd3.json`` (a reference to the pipeline the text encoders and VAE come
        from, plus resolution and shift), then either ``transformer/`` (diffusers
        ``save_pretrained``, safetensors) for a fully fine-tuned model, or ``lora.safetensors``
        + ``lora.json`` (rank, alpha, targets) and a reference to the base transformer
        (``base_transformer/`` is written when the base is not a loadable reference).
        Use :func:`export_pipeline` for a standalone diffusers pipeline.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {
            "format": "gdmd-sd3",
            "version": 1,
            "pipeline": asdict(self.shared.pipeline),
            "resolution": self.resolution,
            "shift": self.schedule.shift,
        }
        if self.lora is None:
            self.transformer.save_pretrained(directory / "transformer", safe_serialization=True)
            metadata["transformer"] = {"kind": "full", "path": "transformer"}
        else:
            from safetensors.torch import save_file

            tensors = {
                name: w.detach().cpu().contiguous()
                for name, w in _lora_weights(self.transformer).items()
            }
            save_file(tensors, str(directory / LORA_WEIGHTS))
            (directory / LORA_METADATA).write_text(
                json.dumps(
                    {
                        "rank": self.lora.rank,
                        "alpha": self.lora.alpha,
                        "targets": list(self.lora.targets),
                    },
                    indent=2,
                )
                + "\n"
            )
            if self.base is not None:
                base = asdict(self.base)
            else:
                _plain_copy(self.transformer, merge=False).save_pretrained(
                    directory / "base_transformer", safe_serialization=True
                )
                base = {"model": "base_transformer", "relative": True}
            metadata["transformer"] = {"kind": "lora", "base": base}
        (directory / SAVE_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")

    # ----------------------------------------------------------------------- LoRA and roles

    def add_lora(self, spec: LoRASpec, generator: torch.Generator) -> None:
        """Wrap the target projections in :class:`LoRALinear` (zero-initialised ``up``)."""
        if self.lora is not None:
            raise SD3ConfigError("this sd3 model already has LoRA adapters")
        # LoRA init draws on the CPU, from a seed taken from the run's (possibly CUDA) generator.
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        _add_lora(self.transformer, spec, torch.Generator().manual_seed(seed))
        self.lora = spec

    def apply_role(self) -> None:
        """Freeze a teacher (and set eval mode); make a student/critic trainable."""
        if self.role == "teacher":
            self.requires_grad_(False)
            self.eval()
            return
        self.transformer.requires_grad_(self.lora is None)
        for weight in _lora_weights(self.transformer).values():
            weight.requires_grad_(True)
        self.train()

    # ----------------------------------------------------------------------------- helpers

    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        channels = self.sample_shape[0]
        if x_t.ndim != 4 or x_t.shape[1] != channels:
            raise ContractError(
                f"sd3 predict_x0 expects x_t [B, {channels}, h, w], got {tuple(x_t.shape)}"
            )
        if x_t.shape[2] % self.patch_size or x_t.shape[3] % self.patch_size:
            raise ContractError(
                f"sd3 latent height and width must be multiples of the patch size "
                f"{self.patch_size}, got {tuple(x_t.shape[2:])}"
            )
        batch = x_t.shape[0]
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ContractError(f"t must have shape [{batch}], got {tuple(t.shape)}")
        missing = {"prompt_embeds", "pooled_prompt_embeds"} - set(cond)
        if missing:
            raise ContractError(
                f"sd3 conditioning lacks {sorted(missing)}; build it with encode_prompts"
            )
        for key in ("prompt_embeds", "pooled_prompt_embeds"):
            if cond[key].shape[0] != batch:
                raise ContractError(
                    f"cond[{key!r}] has batch {cond[key].shape[0]}, x_t has batch {batch}"
                )
        return t


def _keep_only_lora_weights(
    module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    if getattr(module, "lora", None) is None:
        return
    for key in [k for k in state_dict if k.startswith(prefix) and not _is_lora_key(k)]:
        del state_dict[key]


def _allow_missing_frozen_weights(module: torch.nn.Module, incompatible_keys: Any) -> None:
    if getattr(module, "lora", None) is None:
        return
    assert isinstance(module, SD3Model)
    frozen = {"transformer." + k for k in module.transformer.state_dict() if not _is_lora_key(k)}

    def is_frozen(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[i:]) in frozen for i in range(len(parts)))

    incompatible_keys.missing_keys[:] = [
        k for k in incompatible_keys.missing_keys if not is_frozen(k)
    ]


# --------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------


def build_sd3(config: SD3Config, ctx: BuildContext) -> SD3Model:
    """Build an SD3 teacher, student or critic.

    The role is ``ctx.components["role"]`` (``"teacher"`` when absent). With
    ``ctx.components["init_from"]`` an :class:`SD3Model`, the new model shares its text
    encoders, tokenizers and VAE by reference and gets a deep copy of its transformer (any
    LoRA merged in); otherwise the pipeline is loaded from ``config.model``. Then this
    config's LoRA is added if ``lora_rank`` is set, and the role decides what trains: nothing
    for the teacher, the LoRA matrices or the whole transformer otherwise.
    """
    role = ctx.components.get("role", "teacher")
    if role not in ROLES:
        raise SD3ConfigError(f"unknown role {role!r} for an sd3 model; use one of {ROLES}")
    if role == "teacher" and config.lora_rank is not None:
        raise SD3ConfigError(
            "lora_rank is set for the teacher, but the teacher is frozen; set it on the "
            "student or critic"
        )
    dtype = _DTYPES[config.dtype] if config.dtype is not None else ctx.dtype
    source = ctx.components.get("init_from")
    saved_lora: tuple[LoRASpec, dict[str, torch.Tensor]] | None = None
    shift: float | None

    if source is not None:
        if not isinstance(source, SD3Model):
            raise SD3ConfigError(
                f"an sd3 {role} can only init_from another sd3 model, got {type(source).__name__}"
            )
        _check_same_pipeline(config, source)
        shared = source.shared
        transformer = _plain_copy(source.transformer, merge=True).to(ctx.device)
        if transformer.dtype != dtype:
            transformer.to(dtype)
        # With LoRA merged in, the copy matches no saved weights.
        base = source.base if source.lora is None else None
        resolution = config.resolution or source.resolution
        shift = config.shift if config.shift is not None else source.schedule.shift
    else:
        if config.model is None:
            raise SD3ConfigError(
                f"the sd3 {role} needs `model` (a hub id or local pipeline directory) "
                "unless it has init_from"
            )
        loaded = _load(config, dtype, ctx.device)
        shared, transformer, base, saved_lora = (
            loaded.shared,
            loaded.transformer,
            loaded.base,
            loaded.lora,
        )
        resolution = config.resolution or loaded.resolution
        shift = config.shift if config.shift is not None else loaded.shift

    model = SD3Model(
        transformer,
        shared,
        role=role,
        resolution=resolution,
        shift=shift,
        max_sequence_length=config.max_sequence_length,
        compute_dtype=dtype,
        base=base,
    )
    if saved_lora is not None:
        spec, weights = saved_lora
        if config.lora_rank is not None and config.lora_rank != spec.rank:
            raise SD3ConfigError(
                f"{config.model} holds LoRA weights of rank {spec.rank}, but lora_rank is "
                f"{config.lora_rank}; leave lora_rank unset to continue from them"
            )
        model.add_lora(spec, ctx.generator)
        _load_lora_weights(model, weights, config.model or "")
    elif config.lora_rank is not None:
        alpha = config.lora_alpha if config.lora_alpha is not None else float(config.lora_rank)
        model.add_lora(LoRASpec(config.lora_rank, alpha, config.lora_targets), ctx.generator)
    if config.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    model.apply_role()
    if model.role != "teacher" and model.lora is None:
        model.base = None  # fully trainable: its weights will leave any saved copy behind
    return model


def _check_same_pipeline(config: SD3Config, source: SD3Model) -> None:
    """With init_from, the pipeline fields may only repeat the source's (the encoders are its)."""
    ref = source.shared.pipeline
    for key, mine, theirs in (
        ("model", config.model, ref.model),
        ("revision", config.revision, ref.revision),
        ("variant", config.variant, ref.variant),
    ):
        if mine is None or mine == theirs:
            continue
        if key == "model" and _same_local_dir(mine, ref.model):
            continue
        raise SD3ConfigError(
            f"{key} = {mine!r} differs from the init_from model's {theirs!r}; a model built "
            f"with init_from shares that model's pipeline, so leave {key} unset"
        )
    has_t5 = source.shared.text_encoder_3 is not None
    if "drop_t5" in config.model_fields_set and config.drop_t5 == has_t5:
        raise SD3ConfigError(
            f"drop_t5 = {str(config.drop_t5).lower()} differs from the init_from model, which "
            f"was loaded {'with' if has_t5 else 'without'} T5; leave drop_t5 unset"
        )


def _same_local_dir(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


@dataclass
class _Loaded:
    shared: SD3SharedComponents
    transformer: SD3Transformer2DModel
    base: ModelRef | None
    lora: tuple[LoRASpec, dict[str, torch.Tensor]] | None
    resolution: int | None
    shift: float | None


def _load(config: SD3Config, dtype: torch.dtype, device: torch.device) -> _Loaded:
    """Load a diffusers SD3 pipeline, or a directory written by :meth:`SD3Model.save_pretrained`."""
    assert config.model is not None
    local = Path(config.model).expanduser()
    saved = _read_saved_metadata(local)
    if saved is None:
        if not local.is_dir() and not _HUB_ID.match(config.model):
            raise SD3LoadError(
                f"sd3 model {config.model!r} not found: no such directory, and it is not a "
                f"hub id. {_OFFLINE_HINT}"
            )
        model = str(local.resolve()) if local.is_dir() else config.model
        pipeline_ref = ModelRef(model, config.revision, config.variant)
        pipe = _load_pipeline(pipeline_ref, dtype, config.drop_t5)
        return _Loaded(
            _shared_from(pipe, pipeline_ref, device),
            pipe.transformer.to(device),
            ModelRef(model, config.revision, config.variant, subfolder="transformer"),
            None,
            None,
            None,
        )

    root = local.resolve()
    pipeline_ref = ModelRef(**saved["pipeline"])
    pipeline_transformer = ModelRef(
        pipeline_ref.model, pipeline_ref.revision, pipeline_ref.variant, "transformer"
    )
    entry = saved["transformer"]
    lora: tuple[LoRASpec, dict[str, torch.Tensor]] | None = None
    if entry["kind"] == "full":
        weights = ModelRef(str(root), subfolder=entry["path"])
    else:
        base_fields = dict(entry["base"])
        if base_fields.pop("relative", False):
            base_fields["model"] = str(root / base_fields["model"])
        weights = ModelRef(**base_fields)
        lora = _read_saved_lora(root)
    if weights == pipeline_transformer:
        transformer = None  # the pipeline loads its own
    else:
        transformer = _load_transformer(weights, dtype)
    pipe = _load_pipeline(pipeline_ref, dtype, config.drop_t5, transformer)
    # Only the pipeline's own transformer is a lasting reference: a save directory such as a
    # checkpoint may be deleted, so a model loaded from one writes its base out in full.
    base = weights if weights == pipeline_transformer else None
    return _Loaded(
        _shared_from(pipe, pipeline_ref, device),
        pipe.transformer.to(device),
        base,
        lora,
        saved.get("resolution"),
        saved.get("shift"),
    )


def _read_saved_metadata(directory: Path) -> dict[str, Any] | None:
    path = directory / SAVE_METADATA
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text())
        if metadata.get("format") != "gdmd-sd3":
            raise ValueError(f"format is {metadata.get('format')!r}, not 'gdmd-sd3'")
        return dict(metadata)
    except (OSError, ValueError) as err:
        raise SD3LoadError(f"cannot read {path}: {err}") from err


def _read_saved_lora(root: Path) -> tuple[LoRASpec, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    try:
        spec = json.loads((root / LORA_METADATA).read_text())
        weights = load_file(str(root / LORA_WEIGHTS))
        return LoRASpec(int(spec["rank"]), float(spec["alpha"]), tuple(spec["targets"])), weights
    except (OSError, ValueError, KeyError) as err:
        raise SD3LoadError(f"cannot read the LoRA weights saved in {root}: {err}") from err


def _load_lora_weights(model: SD3Model, weights: Mapping[str, torch.Tensor], where: str) -> None:
    expected = _lora_weights(model.transformer)
    if set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights))[:3]
        extra = sorted(set(weights) - set(expected))[:3]
        raise SD3LoadError(
            f"the LoRA weights in {where} do not fit the transformer "
            f"(missing e.g. {missing}, unexpected e.g. {extra})"
        )
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(weights[name])


def _describe(ref: ModelRef) -> str:
    extra = "".join(
        f", {k}={v!r}" for k, v in (("revision", ref.revision), ("variant", ref.variant)) if v
    )
    return f"{ref.model!r}{extra}"


def _load_pipeline(
    ref: ModelRef,
    dtype: torch.dtype,
    drop_t5: bool,
    transformer: SD3Transformer2DModel | None = None,
) -> StableDiffusion3Pipeline:
    from diffusers import StableDiffusion3Pipeline

    local = Path(ref.model)
    if local.is_dir():
        index = local / "model_index.json"
        if not index.is_file():
            raise SD3LoadError(
                f"{ref.model} is not a diffusers pipeline directory (no model_index.json). "
                f"{_OFFLINE_HINT}"
            )
        class_name = json.loads(index.read_text()).get("_class_name", "")
        if not str(class_name).startswith("StableDiffusion3"):
            raise SD3LoadError(
                f"{ref.model} holds a {class_name or 'unknown'} pipeline, not Stable Diffusion 3"
            )
    overrides: dict[str, Any] = {}
    if transformer is not None:
        overrides["transformer"] = transformer
    if drop_t5:
        overrides.update(text_encoder_3=None, tokenizer_3=None)
    try:
        return StableDiffusion3Pipeline.from_pretrained(
            ref.model,
            revision=ref.revision,
            variant=ref.variant,
            **_dtype_kwarg(dtype),
            **overrides,
        )
    except (OSError, ValueError) as err:
        raise SD3LoadError(
            f"cannot load the SD3 pipeline {_describe(ref)}: {_first_line(err)}. {_OFFLINE_HINT}"
        ) from err


def _load_transformer(ref: ModelRef, dtype: torch.dtype) -> SD3Transformer2DModel:
    from diffusers import SD3Transformer2DModel

    try:
        return SD3Transformer2DModel.from_pretrained(
            ref.model,
            subfolder=ref.subfolder,
            revision=ref.revision,
            variant=ref.variant,
            **_dtype_kwarg(dtype),
        )
    except (OSError, ValueError) as err:
        where = _describe(ref) + (f" (subfolder {ref.subfolder!r})" if ref.subfolder else "")
        raise SD3LoadError(
            f"cannot load the SD3 transformer {where}: {_first_line(err)}. {_OFFLINE_HINT}"
        ) from err


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype argument: ``dtype`` in recent diffusers, else ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    name = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    return {name: dtype}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _shared_from(
    pipe: StableDiffusion3Pipeline, ref: ModelRef, device: torch.device
) -> SD3SharedComponents:
    frozen = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.vae]
    for module in frozen:
        if module is not None:
            module.requires_grad_(False).eval().to(device)
    return SD3SharedComponents(
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        text_encoder_3=pipe.text_encoder_3,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        tokenizer_3=pipe.tokenizer_3,
        vae=pipe.vae,
        scheduler_config=dict(pipe.scheduler.config),
        pipeline=ref,
    )


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_pipeline(
    model: SD3Model,
    directory: str | Path,
    *,
    student_timesteps: Sequence[float] | None = None,
) -> Path:
    """Write a standalone diffusers pipeline that ``StableDiffusion3Pipeline.from_pretrained``
    loads, with any LoRA merged into the transformer weights.

    Without ``student_timesteps`` the scheduler is the source pipeline's (deterministic Euler)
    with the model's ``shift``: right for a teacher or a fully fine-tuned model.

    With ``student_timesteps`` (the few-step student's flow times, e.g. ``[1.0, 0.75, 0.5,
    0.25]``) the scheduler is set up for DMD's multi-step sampler: ``stochastic_sampling=True``
    (predict x0, re-noise it with fresh noise to the next time) and ``shift=1.0`` so the
    times passed as ``sigmas`` are used as given. Sample with
    ``pipe(prompt, sigmas=timesteps, guidance_scale=1.0)``.

    A model loaded with ``drop_t5`` is exported without T5 (it was trained on zeros in the T5
    slot); diffusers then needs ``from_pretrained(dir, text_encoder_3=None,
    tokenizer_3=None)``. ``gdmd_export.json`` records the timesteps and the loading call.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    shared = model.shared
    scheduler_config = dict(shared.scheduler_config)
    times: list[float] | None = None
    if student_timesteps is None:
        scheduler_config["shift"] = model.schedule.shift
    else:
        times = [float(t) for t in student_timesteps]
        if not times or any(not 0.0 < t <= 1.0 for t in times) or _not_decreasing(times):
            raise SD3ConfigError(
                f"student_timesteps must be decreasing flow times in (0, 1], got {times}"
            )
        scheduler_config.update(shift=1.0, stochastic_sampling=True, use_dynamic_shifting=False)
    pipe: Any = StableDiffusion3Pipeline(
        transformer=_plain_copy(model.transformer, merge=True),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
        vae=shared.vae,
        text_encoder=shared.text_encoder,
        tokenizer=shared.tokenizer,
        text_encoder_2=shared.text_encoder_2,
        tokenizer_2=shared.tokenizer_2,
        text_encoder_3=shared.text_encoder_3,
        tokenizer_3=shared.tokenizer_3,
    )
    directory = Path(directory)
    pipe.save_pretrained(directory, safe_serialization=True)

    without_t5 = shared.text_encoder_3 is None
    load = "StableDiffusion3Pipeline.from_pretrained(dir" + (
        ", text_encoder_3=None, tokenizer_3=None)" if without_t5 else ")"
    )
    sample = "pipe(prompt, sigmas=timesteps, guidance_scale=1.0)" if times else "pipe(prompt)"
    notes = {
        "format": "gdmd-sd3-export",
        "role": model.role,
        "timesteps": times,
        "guidance_scale": 1.0 if times else None,
        "without_t5": without_t5,
        "load": load,
        "sample": sample,
    }
    (directory / EXPORT_METADATA).write_text(json.dumps(notes, indent=2) + "\n")
    return directory


def _not_decreasing(values: list[float]) -> bool:
    return any(later >= earlier for earlier, later in zip(values, values[1:], strict=False))
