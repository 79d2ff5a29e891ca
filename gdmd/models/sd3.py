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

Memory: the transformer is the only per-role cost. With LoRA (``lora_rank``) a role trains a
peft adapter (diffusers' own SD3 LoRA recipe) over frozen base weights, and checkpoints
(``state_dict``) hold only the adapter, since the frozen base can be reloaded from the model it
came from. With ``share_base`` (the default where possible) the student's and critic's adapters
sit on the teacher's own transformer (:class:`AdapterHost`) instead of on copies of it: one
base in memory, the teacher being that base with adapters disabled.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
import weakref
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
    "AdapterHost",
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
    "save_lora_file",
    "student_scheduler_config",
]

#: Name suffixes of the attention projections of SD3's joint (MMDiT) blocks: image-stream
#: ``to_q/k/v``, ``to_out.0`` and text-stream ``add_*_proj``, ``to_add_out``. As suffixes they
#: also match SD3.5's second self-attention (``attn2``).

#: Marker file of a directory written by :meth:`SD3Model.save_pretrained`.
SAVE_METADATA = "gdmd_sd3.json"
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
# LoRA: peft adapters on the diffusers transformer, one per role
# --------------------------------------------------------------------------------------------

#: The file of a LoRA in diffusers' format (what ``StableDiffusion3Pipeline.load_lora_weights``
#: reads): keys ``transformer.<peft key>``, the LoRA config in the safetensors metadata.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"

#: Names of the per-adapter containers peft puts in each LoRA layer (``lora_A[name]``, ...).
_ADAPTER_DICTS = frozenset(
    {
        "lora_A",
        "lora_B",
        "lora_dropout",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
    }
)


@dataclass(frozen=True)
class LoRASpec:
    """Rank, alpha and target suffixes of the LoRA adapter of one role."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def peft_config(self, modules: Sequence[str] | None = None) -> Any:
        """The ``peft.LoraConfig`` of diffusers' own SD3 LoRA training recipe
        (``examples/dreambooth/train_dreambooth_lora_sd3.py``): gaussian ``A``, zero ``B``.
        ``modules``: the full names to adapt (default: every match of the target suffixes)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            init_lora_weights="gaussian",
            target_modules=list(modules if modules is not None else self.targets),
        )


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _check_targets(transformer: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules the target suffixes name, less those that
    cannot affect the output (:func:`_outputless`); a user's target that names none is an
    error (peft would silently skip it)."""
    # A projection that already carries another role's adapter is peft's wrapper around it.
    linear = [
        n.removesuffix(".base_layer")
        for n, m in transformer.named_modules()
        if type(m) is torch.nn.Linear and not _is_lora_key(n + ".weight")
    ]
    found = []
    for target in targets:
        if any(_matches(n, target) for n in linear):
            found.append(target)
        # A default target may be absent from a given transformer (the last joint block has
        # no text output projection, so a 1-block model has no ``to_add_out`` at all).
        elif target not in DEFAULT_LORA_TARGETS:
            hits = any(_matches(n, target) for n, _ in transformer.named_modules())
            what = "matches no nn.Linear module" if hits else "matches no module"
            raise SD3ConfigError(
                f"lora_targets entry {target!r} {what} of the SD3 transformer; use suffixes such "
                f"as {', '.join(repr(t) for t in DEFAULT_LORA_TARGETS)}"
            )
    if not found:
        raise SD3ConfigError(f"lora_targets {list(targets)} match no module of the transformer")
    skip = set(_outputless(transformer, found))
    return [n for n in linear if any(_matches(n, t) for t in found) and n not in skip]


def _outputless(transformer: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """Targeted projections that cannot affect the output: the text queries (``add_q_proj``)
    of a block whose text stream ends there (``context_pre_only``, SD3's last block) only
    feed text outputs that are discarded. An adapter there would never get a gradient, and
    DDP (which expects a gradient for every trained weight) would stop at the next step."""
    if not any(_matches("add_q_proj", t) for t in targets):
        return []
    return [
        f"{name}.add_q_proj"
        for name, module in transformer.named_modules()
        if getattr(module, "context_pre_only", None) is True and hasattr(module, "add_q_proj")
    ]


def _adapter_key(parts: Sequence[str]) -> tuple[int, str] | None:
    """Where an adapter name sits in a dotted name: ``(index, adapter)`` or ``None``."""
    for i, part in enumerate(parts[:-1]):
        if part in _ADAPTER_DICTS:
            return i + 1, parts[i + 1]
    return None


def _is_lora_key(key: str) -> bool:
    return _adapter_key(key.split(".")) is not None


class AdapterHost:
    """One diffusers transformer and the peft LoRA adapters on it, one adapter per role.

    With ``share_base`` the teacher, the critic and the student are all views of one host:
    the teacher is the base with adapters disabled, the critic and the student are the base
    with their own adapter. :meth:`activate` switches what the next forward computes.

    peft's ``set_adapter`` marks the active adapter trainable and every other one frozen, and
    ``disable_adapters`` freezes them all; an optimiser built on those weights would then
    silently stop training them. So after every switch the host re-asserts
    ``requires_grad=True`` on every adapter it was told is trained (:attr:`trainable`).
    """

    def __init__(self, transformer: SD3Transformer2DModel) -> None:
        self.transformer = transformer
        #: Adapter name -> its LoRA spec, and -> its trained (float32) weights.
        self.specs: dict[str, LoRASpec] = {}
        self.trainable: dict[str, list[torch.nn.Parameter]] = {}
        self._selected: str | None = None
        self._disabled = False
        self._layers: list[Any] = []  # peft's LoRA layers
        #: The models viewing this transformer (weak: a host does not keep a model alive).
        self._members: list[weakref.ref[SD3Model]] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> AdapterHost:
        new = AdapterHost.__new__(AdapterHost)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = [] if key == "_members" else copy.deepcopy(value, memo)
        return new

    @property
    def adapters(self) -> list[str]:
        return list(self.specs)

    def members(self) -> list[SD3Model]:
        alive = [m for m in (ref() for ref in self._members) if m is not None]
        self._members = [weakref.ref(m) for m in alive]
        return alive

    def join(self, model: SD3Model) -> None:
        self._members.append(weakref.ref(model))

    def free_name(self, role: str) -> str:
        name, i = role, 2
        while name in self.specs:
            name, i = f"{role}_{i}", i + 1
        return name

    def add(self, name: str, spec: LoRASpec, generator: torch.Generator, trained: bool) -> None:
        """Add adapter ``name``: float32 weights, ``A`` drawn from ``generator``, ``B`` zero."""
        modules = _check_targets(self.transformer, spec.targets)
        # peft's gaussian init draws A from the global RNG; draw nothing from it, and redraw
        # A below from the run's generator so that builds are seeded.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            self.transformer.add_adapter(spec.peft_config(modules), adapter_name=name)
        weights = []
        for layer_name, param in self.transformer.named_parameters():
            found = _adapter_key(layer_name.split("."))
            if found is None or found[1] != name:
                continue
            # Float32 whatever the base dtype: these are the trained (master) weights, and
            # at a learning rate of 1e-6 bfloat16 weights would not move at all.
            param.data = param.data.float()
            if ".lora_A." in layer_name:
                # peft's gaussian init: N(0, 1/r^2), here from the run's generator.
                drawn = torch.randn(param.shape, generator=generator, device=generator.device)
                param.data.copy_(drawn / spec.rank)
            else:
                param.data.zero_()
            weights.append(param)
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._layers = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]
        self.specs[name] = spec
        if trained:
            self.trainable[name] = weights
        self._selected, self._disabled = name, False  # add_adapter activates the new adapter
        self._reassert()
        for member in self.members():
            member._register_view()

    def activate(self, name: str | None) -> None:
        """Make the next forward use adapter ``name``, or the bare base (``None``)."""
        if not self.specs:
            return
        # The layers' own switches, as the transformer's set_adapter / disable_adapters /
        # enable_adapters call them, without their per-call peft version check.
        if name is None:
            if not self._disabled:
                for layer in self._layers:
                    layer.enable_adapters(False)
                self._disabled = True
        else:
            if self._disabled:
                for layer in self._layers:
                    layer.enable_adapters(True)
                self._disabled = False
            if self._selected != name:
                for layer in self._layers:
                    layer.set_adapter(name)
                self._selected = name
        self._reassert()

    def _reassert(self) -> None:
        for weights in self.trainable.values():
            for param in weights:
                param.requires_grad_(True)

    def adapter_weights(self, name: str) -> dict[str, torch.nn.Parameter]:
        """``{peft key without the adapter name: weight}``: the keys of diffusers' LoRA files."""
        out = {}
        for layer_name, param in self.transformer.named_parameters():
            parts = layer_name.split(".")
            found = _adapter_key(parts)
            if found is not None and found[1] == name:
                out[".".join(parts[: found[0]] + parts[found[0] + 1 :])] = param
        return out

    def frozen_base(self) -> Iterator[torch.nn.Parameter]:
        return (p for n, p in self.transformer.named_parameters() if not _is_lora_key(n))


def _view(module: torch.nn.Module, own: str | None) -> torch.nn.Module:
    """``module`` without the LoRA adapters of other roles, sharing every weight with it.

    Returns ``module`` itself when it holds no other role's adapter; otherwise a plain
    container with the same child names, whose leaves are ``module``'s own submodules, so
    that a view's ``named_parameters`` (and ``state_dict``, ``torch.func.functional_call``,
    ``requires_grad_``) reach exactly the weights this role computes with.
    """

    def foreign(name: str) -> bool:
        found = _adapter_key(name.split("."))
        return found is not None and found[1] != own

    if not any(foreign(n) for n, _ in module.named_parameters()):
        return module
    view = torch.nn.Module()
    for name, child in module.named_children():
        if name in _ADAPTER_DICTS:
            kept = torch.nn.Module()
            if own is not None and own in child:  # type: ignore[operator]
                entry = child[own]  # type: ignore[index]
                if isinstance(entry, torch.nn.Parameter):
                    kept.register_parameter(own, entry)
                else:
                    kept.add_module(own, entry)
            view.add_module(name, kept)
        else:
            view.add_module(name, _view(child, own))
    for name, param in module.named_parameters(recurse=False):
        view.register_parameter(name, param)
    for name, buffer in module.named_buffers(recurse=False):
        view.register_buffer(name, buffer)
    return view


def _plain_copy(model: SD3Model, merge: bool = True) -> SD3Transformer2DModel:
    """A copy of ``model``'s transformer without peft layers: the model's own LoRA merged into
    the weights (``merge=True``) or dropped, every other role's adapter dropped.

    The merge is ``W + (alpha / r) B A`` in float32, rounded once to ``W``'s dtype.
    """
    plain = copy.deepcopy(model.host.transformer)
    if not getattr(plain, "_hf_peft_config_loaded", False):
        return plain
    own = model.adapter
    if merge and own is not None:
        from peft.tuners.lora import LoraLayer

        scale = model.host.specs[own].scale
        with torch.no_grad():
            for layer in plain.modules():
                if isinstance(layer, LoraLayer) and own in layer.lora_A:
                    base = layer.get_base_layer()
                    delta = layer.lora_B[own].weight.float() @ layer.lora_A[own].weight.float()
                    merged = base.weight.float() + scale * delta
                    base.weight.copy_(merged.to(base.weight.dtype))
    plain.unload_lora()
    return plain


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

    The transformer lives in an :class:`AdapterHost`, possibly shared with other roles
    (``share_base``); the model computes with the host's base plus its own adapter
    (``adapter``), or the bare base (``adapter = None``: a teacher, or a fully fine-tuned
    model). The only registered submodule is ``transformer``: the host's transformer, or a
    view of it without other roles' adapters, so ``parameters()`` and ``state_dict()`` never
    reach another role's weights. The text encoders and the VAE live in ``shared``
    (:class:`SD3SharedComponents`) and are never copied, saved in ``state_dict`` or trained.
    ``forward`` is :meth:`predict_x0`.

    With LoRA, ``state_dict`` holds only this model's LoRA matrices and ``load_state_dict``
    expects only those, so checkpoints stay small and frozen base weights never enter them.
    Their keys are peft's (``...to_q.lora_A.<adapter>.weight``), the same in either layout.
    """

    def __init__(
        self,
        host: AdapterHost | SD3Transformer2DModel,
        shared: SD3SharedComponents,
        *,
        role: str,
        adapter: str | None = None,
        resolution: int | None = None,
        shift: float | None = None,
        max_sequence_length: int = 256,
        compute_dtype: torch.dtype | None = None,
        base: ModelRef | None = None,
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise SD3ConfigError(f"unknown role {role!r} for an sd3 model; use one of {ROLES}")
        if not isinstance(host, AdapterHost):
            host = AdapterHost(host)
        self.host = host
        self.adapter = adapter
        host.join(self)
        self._register_view()
        transformer = host.transformer
        self.shared = shared
        self.decoder = SD3Decoder(shared.vae)
        self.role = role
        self.max_sequence_length = max_sequence_length
        self.compute_dtype = compute_dtype or transformer.dtype
        #: Where the transformer's weights below any LoRA can be reloaded from; ``None`` when
        #: they may differ from any saved copy (a fully trainable model, or a copy of one, or
        #: a copy with LoRA merged in).
        self.base = base
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

    @property
    def transformer(self) -> SD3Transformer2DModel:
        """The diffusers transformer this model computes with (possibly shared, see ``host``)."""
        return self.host.transformer

    @property
    def lora(self) -> LoRASpec | None:
        """This model's LoRA adapter, if any (see :meth:`add_lora`)."""
        return self.host.specs.get(self.adapter) if self.adapter is not None else None

    @property
    def shares_base(self) -> bool:
        """Whether another model computes with the same transformer."""
        return any(m is not self for m in self.host.members())

    def _register_view(self) -> None:
        self._modules["transformer"] = _view(self.host.transformer, self.adapter)

    def __deepcopy__(self, memo: dict[int, Any]) -> SD3Model:
        # The default deep copy, plus joining the copied host (hosts do not copy members).
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        new.host.join(new)
        return new

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
        self.host.activate(self.adapter)
        velocity = self.transformer(
            hidden_states=x_in.to(self.compute_dtype),
            timestep=t_in.float() * self.num_train_timesteps,
            encoder_hidden_states=embeds.to(self.compute_dtype),
            pooled_projections=pooled.to(self.compute_dtype),
            return_dict=False,
        )[0]
        if velocity.requires_grad and self.transformer.gradient_checkpointing:
            # Backward recomputes the checkpointed blocks with whatever adapter is active by
            # then (on a shared base, maybe another role's): switch back to ours first. The
            # hook runs when the gradient reaches this output, before any block recomputes.
            velocity.register_hook(self._activate_for_backward)
        velocity = velocity.float()
        if guided:
            assert guidance_scale is not None
            v_uncond, v_cond = velocity.chunk(2)
            velocity = v_uncond + guidance_scale * (v_cond - v_uncond)
        return self.schedule.to_x0(x_t.float(), t.float(), velocity).to(x_t.dtype)

    def _activate_for_backward(self, grad: torch.Tensor) -> None:
        self.host.activate(self.adapter)

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
        from, plus resolution, shift and the LoRA spec), then either ``transformer/``
        (diffusers ``save_pretrained``, safetensors) for a fully fine-tuned model, or the
        LoRA in diffusers' own file format (``pytorch_lora_weights.safetensors``, see
        :func:`save_lora_file`) and a reference to the base transformer
        (``base_transformer/`` is written when the base is not a loadable reference).
        Use :func:`export_pipeline` for a standalone diffusers pipeline.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {
            "format": "gdmd-sd3",
            "version": 2,
            "pipeline": asdict(self.shared.pipeline),
            "resolution": self.resolution,
            "shift": self.schedule.shift,
        }
        lora = self.lora
        if lora is None:
            plain = _plain_copy(self, merge=False) if self.host.specs else self.transformer
            plain.save_pretrained(directory / "transformer", safe_serialization=True)
            metadata["transformer"] = {"kind": "full", "path": "transformer"}
        else:
            save_lora_file(self, directory)
            if self.base is not None:
                base = asdict(self.base)
            else:
                _plain_copy(self, merge=False).save_pretrained(
                    directory / "base_transformer", safe_serialization=True
                )
                base = {"model": "base_transformer", "relative": True}
            metadata["transformer"] = {
                "kind": "lora",
                "base": base,
                "lora": {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)},
            }
        (directory / SAVE_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")

    # ----------------------------------------------------------------------- LoRA and roles

    def add_lora(self, spec: LoRASpec, generator: torch.Generator) -> None:
        """Give the model its own peft LoRA adapter (gaussian ``A`` from ``generator``, zero
        ``B``, float32), named after its role."""
        if self.adapter is not None:
            raise SD3ConfigError("this sd3 model already has LoRA adapters")
        name = self.host.free_name(self.role)
        # LoRA init draws on the CPU, from a seed taken from the run's (possibly CUDA) generator.
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        self.adapter = name
        self.host.add(
            name, spec, torch.Generator().manual_seed(seed), trained=self.role != "teacher"
        )

    def apply_role(self) -> None:
        """Freeze a teacher (and set eval mode); make a student/critic trainable."""
        if self.role == "teacher":
            self.requires_grad_(False)
            self.eval()
            return
        if self.lora is None:
            self.transformer.requires_grad_(True)
        else:
            for param in self.host.frozen_base():
                param.requires_grad_(False)
            self.host.activate(self.adapter)
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
    encoders, tokenizers and VAE by reference, and either its transformer (``share_base``,
    see :func:`_shares_base`) or a deep copy of it (any LoRA merged in); otherwise the
    pipeline is loaded from ``config.model``. Then this
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

    host: AdapterHost | SD3Transformer2DModel
    if source is not None:
        if not isinstance(source, SD3Model):
            raise SD3ConfigError(
                f"an sd3 {role} can only init_from another sd3 model, got {type(source).__name__}"
            )
        _check_same_pipeline(config, source)
        shared = source.shared
        if _shares_base(config, role, source, dtype, ctx):
            host = source.host
            base = source.base
        else:
            host = _plain_copy(source, merge=True).to(ctx.device)
            if host.dtype != dtype:
                host.to(dtype)
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
        if config.share_base:
            raise SD3ConfigError(
                f"share_base = true needs init_from: the sd3 {role} shares the base of the "
                "model it is initialised from"
            )
        loaded = _load(config, dtype, ctx.device)
        shared, host, base, saved_lora = (
            loaded.shared,
            loaded.transformer,
            loaded.base,
            loaded.lora,
        )
        resolution = config.resolution or loaded.resolution
        shift = config.shift if config.shift is not None else loaded.shift

    model = SD3Model(
        host,
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


def _shares_base(
    config: SD3Config, role: str, source: SD3Model, dtype: torch.dtype, ctx: BuildContext
) -> bool:
    """Whether a model built from ``source`` puts its adapter on ``source``'s transformer.

    Only a LoRA model can, on a frozen base (a teacher without adapter of its own) of the
    same dtype, and not under FSDP (which would shard the base that the teacher also uses).
    ``share_base`` unset: share whenever it can; true: share or say why not; false: copy.
    """
    if config.share_base is False:
        return False
    distributed = str(getattr(getattr(ctx, "accelerator", None), "distributed_type", ""))
    reasons = []
    if config.lora_rank is None:
        reasons.append("it has no lora_rank (a fully fine-tuned model needs its own copy)")
    if source.role != "teacher" or source.adapter is not None:
        reasons.append(f"its init_from model is a {source.role}, not a frozen teacher")
    if source.transformer.dtype != dtype:
        reasons.append(
            f"its dtype {str(dtype).removeprefix('torch.')} differs from the teacher's "
            f"{str(source.transformer.dtype).removeprefix('torch.')}"
        )
    if "FSDP" in distributed.upper():
        reasons.append("FSDP shards each prepared model, so the teacher's base cannot be shared")
    if not reasons:
        return True
    if config.share_base:
        raise SD3ConfigError(
            f"share_base = true, but the sd3 {role} cannot share its teacher's transformer: "
            + "; ".join(reasons)
            + ". Set share_base = false (or leave it unset) for a copy of the transformer"
        )
    return False


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
        lora = _read_saved_lora(root, saved)
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


def _read_saved_lora(
    root: Path, saved: Mapping[str, Any]
) -> tuple[LoRASpec, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    if saved.get("version", 1) < 2:
        raise SD3LoadError(
            f"{root} holds LoRA weights in the format of gdmd's earlier hand-written LoRA "
            "layers, which this version no longer reads; retrain, or load it with the gdmd "
            "version that wrote it and export a merged pipeline"
        )
    try:
        spec = saved["transformer"]["lora"]
        weights = load_file(str(root / LORA_WEIGHTS))
        prefix = "transformer."
        weights = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
        return LoRASpec(int(spec["rank"]), float(spec["alpha"]), tuple(spec["targets"])), weights
    except (OSError, ValueError, KeyError) as err:
        raise SD3LoadError(f"cannot read the LoRA weights saved in {root}: {err}") from err


def _load_lora_weights(model: SD3Model, weights: Mapping[str, torch.Tensor], where: str) -> None:
    assert model.adapter is not None
    expected = model.host.adapter_weights(model.adapter)
    if set(weights) != set(expected) or any(
        weights[k].shape != p.shape for k, p in expected.items()
    ):
        missing = sorted(set(expected) - set(weights))[:3]
        extra = sorted(set(weights) - set(expected))[:3]
        raise SD3LoadError(
            f"the LoRA weights in {where} do not fit the transformer "
            f"(missing e.g. {missing}, unexpected e.g. {extra})"
        )
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(weights[name])


def save_lora_file(model: SD3Model, directory: str | Path) -> Path:
    """Write ``model``'s LoRA as diffusers' ``pytorch_lora_weights.safetensors`` in ``directory``.

    The format ``StableDiffusion3Pipeline.load_lora_weights`` reads, written by the
    pipeline's own ``save_lora_weights``: keys ``transformer.<peft key>`` (adapter name
    stripped), float32, and the adapter's ``LoraConfig`` in the safetensors metadata. Without
    that metadata diffusers would rebuild the config from the tensor shapes with
    ``lora_alpha = r``, silently changing the scale of any LoRA whose alpha is not its rank.
    """
    from diffusers import StableDiffusion3Pipeline

    if model.adapter is None or model.lora is None:
        raise SD3ConfigError(f"this sd3 {model.role} has no LoRA adapter to save")
    weights = {
        key: w.detach().float().cpu().contiguous()
        for key, w in model.host.adapter_weights(model.adapter).items()
    }
    metadata = model.transformer.peft_config[model.adapter].to_dict()
    directory = Path(directory)
    StableDiffusion3Pipeline.save_lora_weights(
        directory,
        transformer_lora_layers=weights,
        transformer_lora_adapter_metadata=metadata,
        weight_name=LORA_WEIGHTS,
    )
    return directory / LORA_WEIGHTS


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
        scheduler_config = student_scheduler_config(scheduler_config)
    pipe: Any = StableDiffusion3Pipeline(
        transformer=_plain_copy(model, merge=True),
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


def student_scheduler_config(scheduler_config: Mapping[str, Any]) -> dict[str, Any]:
    """The source pipeline's ``FlowMatchEulerDiscreteScheduler`` config set up for DMD's
    few-step sampler: ``stochastic_sampling`` (each step predicts x0 and re-noises it with
    fresh noise to the next time, as :func:`gdmd.sampling.consistency_sample` does) and
    ``shift = 1`` without dynamic shifting, so the ``sigmas`` passed to the pipeline are the
    times the student was trained at."""
    config = dict(scheduler_config)
    config.update(shift=1.0, stochastic_sampling=True, use_dynamic_shifting=False)
    return config


def _not_decreasing(values: list[float]) -> bool:
    return any(later >= earlier for earlier, later in zip(values, values[1:], strict=False))
