"""The FLUX.2 [klein] transformer as a gdmd :class:`~gdmd.interfaces.DiffusionModel`."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gdmd.errors import ContractError
from gdmd.interfaces import Conditioning, ExportInfo
from gdmd.schedules import FlowMatchingSchedule
from gdmd_flux2.config import DEFAULT_LORA_TARGETS
from gdmd_flux2.parts import (
    LORA_WEIGHTS,
    ROLES,
    SAVE_METADATA,
    Flux2ConfigError,
    Flux2Decoder,
    Flux2SharedComponents,
    ModelRef,
    image_ids,
    pack,
    text_ids,
    unpack,
)


@dataclass(frozen=True)
class LoRASpec:
    """Rank, alpha and target suffixes of one model's LoRA adapter."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def lora_modules(transformer: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules the target suffixes name. A user's target that
    names none is an error (peft would skip it silently); a default one may be absent."""
    linear = [n for n, m in transformer.named_modules() if type(m) is torch.nn.Linear]
    found = []
    for target in targets:
        hits = [n for n in linear if _matches(n, target)]
        if not hits and target not in DEFAULT_LORA_TARGETS:
            raise Flux2ConfigError(
                f"lora_targets entry {target!r} matches no nn.Linear module of the FLUX.2 "
                f"transformer; use suffixes such as "
                f"{', '.join(repr(t) for t in DEFAULT_LORA_TARGETS)}"
            )
        found += hits
    if not found:
        raise Flux2ConfigError(f"lora_targets {list(targets)} match no module of the transformer")
    return sorted(set(found))


def _is_lora_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


class Flux2Model(torch.nn.Module):
    """A FLUX.2 [klein] transformer as a gdmd :class:`~gdmd.interfaces.DiffusionModel`.

    **Sample space.** Samples are the patchified, batch-norm-normalised latents
    ``[B, 4c, H/16, W/16]`` (``[128, 64, 64]`` for klein at 1024 px), the unpacked form of
    the pipeline's packed sequence: the pipeline draws its starting noise in exactly this
    shape before packing it, and an image-shaped sample keeps gdmd's sample grids and
    per-sample reductions meaningful. :meth:`predict_x0` packs to ``[B, h*w, 4c]`` and back.

    **Prediction.** The transformer predicts the flow velocity ``v = noise - x0`` at flow time
    ``t`` (it receives ``t`` itself: the pipeline passes ``timestep / 1000`` and the
    transformer multiplies by 1000 inside), so ``x0 = x_t - t v``, one Euler step of the
    pipeline's scheduler to ``t = 0``.

    **Guidance.** Real CFG, as the pipeline's base (undistilled) checkpoints run it: the
    conditional and the empty-prompt branches (two passes in the pipeline, one batched pass
    here) mix as ``u + w (c - u)``; since ``x0`` is affine in ``v``, mixing velocities equals
    mixing x0-predictions.

    The only registered submodule is ``transformer``; the Qwen3 encoder, tokenizer and VAE
    live in ``shared`` and are never copied, saved in ``state_dict`` or trained. With LoRA,
    ``state_dict`` holds only this model's LoRA matrices (frozen base weights never enter a
    checkpoint) and ``load_state_dict`` expects only those. ``forward`` is :meth:`predict_x0`.
    """

    #: What :meth:`export` writes (see :mod:`gdmd_flux2.export`).
    export_formats: tuple[str, ...] = ("lora", "merged")

    def __init__(
        self,
        transformer: Any,
        shared: Flux2SharedComponents,
        *,
        role: str,
        resolution: int,
        shift: float,
        max_sequence_length: int,
        text_encoder_layers: Sequence[int],
        compute_dtype: torch.dtype | None = None,
        base: ModelRef | None = None,
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise Flux2ConfigError(f"unknown role {role!r} for a flux2 model; use one of {ROLES}")
        config = transformer.config
        if bool(getattr(config, "guidance_embeds", False)):
            raise Flux2ConfigError(
                "this FLUX.2 transformer has guidance_embeds = true: it is guidance-distilled "
                "(guidance is an input embedding, as in FLUX.2 [dev]), not a klein model that "
                "samples with real CFG; the flux2 family supports FLUX.2 [klein]"
            )
        if int(config.patch_size) != 1:
            raise Flux2ConfigError(
                f"the FLUX.2 transformer has patch_size {config.patch_size}; klein's is 1 (the "
                "2 x 2 patches are made from the VAE latents before the transformer)"
            )
        latent_channels = int(shared.vae.config.latent_channels)
        if int(config.in_channels) != 4 * latent_channels:
            raise Flux2ConfigError(
                f"the transformer takes {config.in_channels} channels but the VAE's 2 x 2 "
                f"patchified latents have {4 * latent_channels}"
            )
        hidden = int(shared.text_encoder.config.hidden_size)
        if len(text_encoder_layers) * hidden != int(config.joint_attention_dim):
            raise Flux2ConfigError(
                f"text_encoder_layers {list(text_encoder_layers)} give prompt embeddings of "
                f"{len(text_encoder_layers)} x {hidden} = {len(text_encoder_layers) * hidden} "
                f"features, but the transformer's joint_attention_dim is "
                f"{config.joint_attention_dim}"
            )
        multiple = 2 * shared.vae_scale_factor
        if resolution % multiple:
            raise Flux2ConfigError(
                f"resolution {resolution} is not a multiple of 2 * vae_scale_factor = {multiple}"
            )
        self.transformer = transformer
        self.shared = shared
        self.decoder = Flux2Decoder(shared.vae)
        self.role = role
        self.resolution = int(resolution)
        self.max_sequence_length = int(max_sequence_length)
        self.text_encoder_layers = tuple(int(i) for i in text_encoder_layers)
        self.compute_dtype = compute_dtype or transformer.dtype
        #: Where the transformer's weights below any LoRA can be reloaded from (the pipeline's
        #: own transformer); ``None`` once they may differ from it.
        self.base = base
        self.lora: LoRASpec | None = None
        self.adapter: str | None = None
        self.schedule = FlowMatchingSchedule(shift)
        side = self.resolution // multiple
        self.sample_shape: tuple[int, ...] = (int(config.in_channels), side, side)
        self.register_state_dict_post_hook(_keep_only_lora_weights)
        self.register_load_state_dict_post_hook(_allow_missing_frozen_weights)

    # ---------------------------------------------------------------- DiffusionModel protocol

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Prompts -> ``{"prompt_embeds": [B, max_sequence_length, joint_attention_dim]}``,
        computed without grad on the shared Qwen3 encoder (see :mod:`gdmd_flux2.parts`)."""
        if isinstance(prompts, str):
            raise ContractError("encode_prompts takes a sequence of prompts, not a single string")
        embeds = self.shared.encode(
            list(prompts), self.max_sequence_length, self.text_encoder_layers
        )
        return {"prompt_embeds": embeds}

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """x0-prediction ``[B, 4c, h, w]`` at latents ``x_t`` and flow times ``t`` ``[B]``
        (see the class doc for the conventions)."""
        t = self._check_inputs(x_t, t, cond)
        embeds = cond["prompt_embeds"]
        batch, _, height, width = x_t.shape
        x_in, t_in = x_t, t
        guided = guidance_scale is not None and guidance_scale != 1.0
        if guided:
            if self.shared.is_distilled:
                raise Flux2ConfigError(
                    f"guidance_scale {guidance_scale:g} asks for CFG, but "
                    f"{self.shared.pipeline.model} is a step-distilled FLUX.2 pipeline "
                    "(is_distilled = true), which has no CFG: "
                    "distil from the base checkpoint (e.g. FLUX.2-klein-base-4B) or set "
                    "guidance_scale = 1.0"
                )
            uncond = self.shared.unconditional(embeds.shape[1], self.text_encoder_layers)
            embeds = torch.cat([uncond.to(embeds).expand(batch, -1, -1), embeds])
            x_in, t_in = torch.cat([x_t, x_t]), torch.cat([t, t])
        device = x_t.device
        velocity = self.transformer(
            hidden_states=pack(x_in).to(self.compute_dtype),
            encoder_hidden_states=embeds.to(self.compute_dtype),
            timestep=t_in.float(),
            img_ids=image_ids(height, width, device),
            txt_ids=text_ids(embeds.shape[1], device),
            guidance=None,
            return_dict=False,
        )[0]
        velocity = unpack(velocity.float(), height, width)
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
        """Write the model so :func:`~gdmd_flux2.loading.build_flux2` (``model = directory``)
        loads it again.

        Layout: ``gdmd_flux2.json`` (the pipeline the encoder and VAE come from, resolution,
        shift, text settings, the LoRA spec), then the LoRA in diffusers' file format
        (:data:`~gdmd_flux2.parts.LORA_WEIGHTS`) over the pipeline's own transformer, or a full
        ``transformer/`` folder (diffusers ``save_pretrained``) for a fully fine-tuned model or
        a LoRA whose base is not the pipeline's transformer (then ``base_transformer/``).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {
            "format": "gdmd-flux2",
            "version": 1,
            "pipeline": asdict(self.shared.pipeline),
            "resolution": self.resolution,
            "shift": self.schedule.shift,
            "max_sequence_length": self.max_sequence_length,
            "text_encoder_layers": list(self.text_encoder_layers),
        }
        lora = self.lora
        if lora is None:
            self.transformer.save_pretrained(directory / "transformer", safe_serialization=True)
            metadata["transformer"] = {"kind": "full", "path": "transformer"}
        else:
            save_lora_file(self, directory)
            if self.base is None:
                plain_copy(self, merge=False).save_pretrained(
                    directory / "base_transformer", safe_serialization=True
                )
            metadata["transformer"] = {
                "kind": "lora",
                "base": "pipeline" if self.base is not None else "base_transformer",
                "lora": {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)},
            }
        (directory / SAVE_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")

    # ------------------------------------------------------------------ Exportable protocol

    def export(self, directory: Path, format: str, info: ExportInfo) -> list[Path]:
        """Write this (trained student) model for diffusers: ``lora`` (a file that
        ``Flux2KleinPipeline.load_lora_weights`` reads on the base pipeline) or ``merged`` (a
        complete pipeline folder), each with a model card; the main file first."""
        from gdmd_flux2.export import export_flux2

        return export_flux2(self, Path(directory), format, info)

    # ----------------------------------------------------------------------- LoRA and roles

    def add_lora(self, spec: LoRASpec, generator: torch.Generator) -> None:
        """Add this model's peft LoRA adapter, named after its role: float32 weights, ``A``
        gaussian ``N(0, 1/r^2)`` (peft's gaussian init) drawn from ``generator``, ``B`` zero,
        so the model starts exactly at its base."""
        from peft import LoraConfig

        if self.lora is not None:
            raise Flux2ConfigError("this flux2 model already has a LoRA adapter")
        modules = lora_modules(self.transformer, spec.targets)
        peft_config = LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft annotates int, uses float
            init_lora_weights="gaussian",
            target_modules=modules,
        )
        # peft's init draws from the global RNG: keep it untouched, and redraw A below.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            self.transformer.add_adapter(peft_config, adapter_name=self.role)
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        cpu = torch.Generator().manual_seed(seed)
        for name, param in self.transformer.named_parameters():
            if not _is_lora_key(name):
                continue
            # Float32 whatever the base dtype: at a learning rate of 1e-6 bfloat16 LoRA
            # weights would not move at all.
            param.data = param.data.float()
            if ".lora_A." in name:
                drawn = torch.randn(param.shape, generator=cpu)
                param.data.copy_(drawn.to(param.device) / spec.rank)
            else:
                param.data.zero_()
        self.lora = spec
        self.adapter = self.role

    def lora_weights(self) -> dict[str, torch.nn.Parameter]:
        """``{peft key without the adapter name: weight}``: the keys of diffusers' LoRA files
        (``transformer_blocks.0.attn.to_q.lora_A.weight``)."""
        if self.adapter is None:
            return {}
        marker = f".{self.adapter}."
        return {
            name.replace(marker, "."): param
            for name, param in self.transformer.named_parameters()
            if _is_lora_key(name)
        }

    def apply_role(self) -> None:
        """Freeze a teacher (and set eval mode); make a student/critic trainable (its LoRA,
        or the whole transformer without LoRA)."""
        if self.role == "teacher":
            self.requires_grad_(False)
            self.eval()
            return
        for name, param in self.transformer.named_parameters():
            param.requires_grad_(self.lora is None or _is_lora_key(name))
        self.train()

    # ----------------------------------------------------------------------------- helpers

    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        channels = self.sample_shape[0]
        if x_t.ndim != 4 or x_t.shape[1] != channels:
            raise ContractError(
                f"flux2 predict_x0 expects patchified latents x_t [B, {channels}, h, w], got "
                f"{tuple(x_t.shape)}"
            )
        batch = x_t.shape[0]
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ContractError(f"t must have shape [{batch}], got {tuple(t.shape)}")
        if "prompt_embeds" not in cond:
            raise ContractError(
                "flux2 conditioning lacks 'prompt_embeds'; build it with encode_prompts"
            )
        embeds = cond["prompt_embeds"]
        width = int(self.transformer.config.joint_attention_dim)
        if embeds.ndim != 3 or embeds.shape[0] != batch or embeds.shape[2] != width:
            raise ContractError(
                f"cond['prompt_embeds'] must be [{batch}, L, {width}], got {tuple(embeds.shape)}"
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
    incompatible_keys.missing_keys[:] = [
        k for k in incompatible_keys.missing_keys if _is_lora_key(k)
    ]


def plain_copy(model: Flux2Model, merge: bool = True, dtype: torch.dtype | None = None) -> Any:
    """A copy of ``model``'s transformer without peft layers: its LoRA merged into the
    weights (``merge=True``) or dropped.

    The merge ``W + (alpha / r) B A`` is computed in float32 and rounded once, to ``dtype``
    (default: ``W``'s dtype); rounded in bfloat16 instead, a delta of about one bfloat16 step
    of ``W`` (what a learning rate of 1e-6 gives) would be partly lost.
    """
    plain = copy.deepcopy(model.transformer)
    if model.adapter is not None and getattr(plain, "_hf_peft_config_loaded", False):
        if merge:
            assert model.lora is not None
            _merge_in_float32(plain, model.adapter, model.lora.scale, dtype)
        plain.unload_lora()
    if dtype is not None and plain.dtype != dtype:
        plain.to(dtype)
    plain.requires_grad_(False)
    return plain


def _merge_in_float32(
    transformer: Any, adapter: str, scale: float, dtype: torch.dtype | None
) -> None:
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in transformer.modules():
            layer: Any = module  # peft types its per-adapter weights as bare modules
            if isinstance(module, LoraLayer) and adapter in layer.lora_A:
                base = layer.get_base_layer()
                delta = layer.lora_B[adapter].weight.float() @ layer.lora_A[adapter].weight.float()
                merged = base.weight.float() + scale * delta
                base.weight.data = merged.to(dtype or base.weight.dtype)


def save_lora_file(model: Flux2Model, directory: str | Path) -> Path:
    """Write ``model``'s LoRA as diffusers' ``pytorch_lora_weights.safetensors``.

    Written by ``Flux2KleinPipeline.save_lora_weights`` itself: keys ``transformer.<peft
    key>``, float32, and the adapter's ``LoraConfig`` in the safetensors metadata. Without that
    metadata diffusers would rebuild the config from the tensor shapes with ``lora_alpha = r``,
    silently changing the scale of a LoRA whose alpha is not its rank.
    """
    from diffusers import Flux2KleinPipeline

    if model.adapter is None:
        raise Flux2ConfigError(f"this flux2 {model.role} has no LoRA adapter to save")
    weights = {k: w.detach().float().cpu().contiguous() for k, w in model.lora_weights().items()}
    metadata = model.transformer.peft_config[model.adapter].to_dict()
    directory = Path(directory)
    Flux2KleinPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=weights,
        transformer_lora_adapter_metadata=metadata,
        weight_name=LORA_WEIGHTS,
    )
    return directory / LORA_WEIGHTS
