"""The SDXL UNet as a gdmd :class:`~gdmd.interfaces.DiffusionModel` (one role).

Conventions, checked against diffusers' ``StableDiffusionXLPipeline`` by the plugin's tests:

* **Time.** gdmd's ``t`` in ``[0, 1]`` is the scheduler timestep ``k = 1000 t - 1``
  (:mod:`gdmd_sdxl.schedule`): ``t = 1, 0.75, 0.5, 0.25`` are DMD2's 999, 749, 499, 249.
* **Output.** The UNet predicts ``eps`` (``x0 = (x_t - sigma eps) / alpha``), or ``v`` for a
  ``v_prediction`` scheduler config.
* **Conditioning.** ``prompt_embeds`` (both CLIPs' penultimate states side by side),
  ``pooled_prompt_embeds`` (the second CLIP's projected pooled output) and ``add_time_ids``
  (original size, crop top-left, target size: ``[R, R, 0, 0, R, R]`` at resolution ``R``).
* **Guidance.** ``u + w (c - u)`` on the UNet output (affine in the output, so equal to mixing
  x0-predictions); the unconditional branch is zeros when the pipeline has
  ``force_zeros_for_empty_prompt`` (SDXL base), else the empty prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gdmd.errors import ContractError
from gdmd.interfaces import Conditioning, ExportInfo
from gdmd_sdxl.common import ROLES, SAVE_METADATA, ModelRef, SDXLConfigError, UNet
from gdmd_sdxl.components import SDXLDecoder, SDXLSharedComponents
from gdmd_sdxl.lora import LoRASpec, add_adapter, is_lora_key, plain_copy, save_lora_file
from gdmd_sdxl.schedule import DiscreteDDPMSchedule

_COND_KEYS = ("prompt_embeds", "pooled_prompt_embeds", "add_time_ids")


class SDXLModel(torch.nn.Module):
    """An SDXL UNet as a gdmd :class:`~gdmd.interfaces.DiffusionModel`.

    Each role owns its UNet (``unet``, the only registered submodule): a student or critic
    built from the teacher gets a copy, with its own peft LoRA adapter when ``lora_rank`` is
    set. The text encoders and VAE live in ``shared`` (:class:`SDXLSharedComponents`) and are
    never copied, saved in ``state_dict`` or trained. ``forward`` is :meth:`predict_x0`.

    With LoRA, ``state_dict`` holds only the LoRA matrices (peft keys,
    ``...to_q.lora_A.<role>.weight``) and ``load_state_dict`` expects only those, so
    checkpoints stay small and frozen base weights never enter them.
    """

    #: What :meth:`export` writes (see :mod:`gdmd_sdxl.export`).
    export_formats: tuple[str, ...] = ("lora", "merged")

    def __init__(
        self,
        unet: UNet,
        shared: SDXLSharedComponents,
        *,
        role: str,
        resolution: int | None = None,
        compute_dtype: torch.dtype | None = None,
        base: ModelRef | None = None,
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise SDXLConfigError(f"unknown role {role!r} for an sdxl model; use one of {ROLES}")
        self.unet = unet
        self.shared = shared
        self.decoder = SDXLDecoder(shared.vae)
        self.role = role
        self.compute_dtype = compute_dtype or unet.dtype
        #: Where the UNet's weights below any LoRA can be reloaded from; ``None`` when they
        #: may differ from any saved copy (a fully trainable model, or a merged copy).
        self.base = base
        #: The peft adapter name and spec of this model's LoRA, if any (:meth:`add_lora`).
        self.adapter: str | None = None
        self.lora: LoRASpec | None = None
        self.schedule = DiscreteDDPMSchedule.from_scheduler_config(shared.scheduler_config)

        self.vae_scale_factor = 2 ** (len(shared.vae.config.block_out_channels) - 1)
        self.resolution = resolution or int(unet.config.sample_size) * self.vae_scale_factor
        if self.resolution % self.vae_scale_factor:
            raise SDXLConfigError(
                f"resolution {self.resolution} is not a multiple of the VAE scale factor "
                f"{self.vae_scale_factor}"
            )
        side = self.resolution // self.vae_scale_factor
        self.sample_shape: tuple[int, ...] = (int(unet.config.in_channels), side, side)
        self._check_micro_conditioning()

        self.register_state_dict_post_hook(_keep_only_lora_weights)
        self.register_load_state_dict_post_hook(_allow_missing_frozen_weights)

    def _check_micro_conditioning(self) -> None:
        config = self.unet.config
        if config.addition_embed_type != "text_time":
            raise SDXLConfigError(
                f"the UNet has addition_embed_type {config.addition_embed_type!r}; an SDXL UNet "
                "has 'text_time' (pooled text embedding and size/crop time ids)"
            )
        passed = int(config.addition_time_embed_dim) * 6 + self.shared.projection_dim
        expected = int(self.unet.add_embedding.linear_1.in_features)
        if passed != expected:
            raise SDXLConfigError(
                f"the UNet expects an added embedding of {expected} features, but 6 time ids "
                f"x {config.addition_time_embed_dim} + the second text encoder's projection "
                f"{self.shared.projection_dim} give {passed}: text encoders and UNet do not fit"
            )

    @property
    def add_time_ids(self) -> list[float]:
        """SDXL's micro-conditioning: original size, crop top-left, target size (pixels)."""
        size = float(self.resolution)
        return [size, size, 0.0, 0.0, size, size]

    # ---------------------------------------------------------------- DiffusionModel protocol

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Prompts -> ``{"prompt_embeds": [B, 77, 2048], "pooled_prompt_embeds": [B, 1280],
        "add_time_ids": [B, 6]}`` (SDXL-base widths), computed without grad on the shared
        encoders, so any model of one family can use another's conditioning."""
        if isinstance(prompts, str):
            raise ContractError("encode_prompts takes a sequence of prompts, not a single string")
        embeds, pooled = self.shared.encode_text(list(prompts))
        time_ids = torch.tensor([self.add_time_ids], device=embeds.device)
        return {
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
            "add_time_ids": time_ids.expand(len(prompts), -1).clone(),
        }

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """x0-prediction ``[B, 4, h, w]`` at latents ``x_t`` and times ``t`` ``[B]``.

        The UNet gets the timestep ``1000 t - 1`` (float32) and predicts ``eps`` (or ``v``).
        With ``guidance_scale`` not ``None`` and not 1, the unconditional and conditional
        branches run in one batched forward and mix as ``u + w (c - u)``.
        """
        t = self._check_inputs(x_t, t, cond)
        parts = {key: cond[key] for key in _COND_KEYS}
        x_in, t_in = x_t, t
        guided = guidance_scale is not None and guidance_scale != 1.0
        if guided:
            uncond = self.shared.unconditional(parts)
            parts = {key: torch.cat([uncond[key].to(parts[key]), parts[key]]) for key in parts}
            x_in, t_in = torch.cat([x_t, x_t]), torch.cat([t, t])
        dtype = self.compute_dtype
        output = self.unet(
            x_in.to(dtype),
            self.schedule.timestep(t_in),
            encoder_hidden_states=parts["prompt_embeds"].to(dtype),
            added_cond_kwargs={
                "text_embeds": parts["pooled_prompt_embeds"].to(dtype),
                "time_ids": parts["add_time_ids"].to(dtype),
            },
            return_dict=False,
        )[0].float()
        if guided:
            assert guidance_scale is not None
            uncond_out, cond_out = output.chunk(2)
            output = uncond_out + guidance_scale * (cond_out - uncond_out)
        return self.schedule.to_x0(x_t.float(), t.float(), output).to(x_t.dtype)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        return self.predict_x0(x_t, t, cond, guidance_scale)

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The LoRA matrices with LoRA, else every UNet weight; nothing for a teacher."""
        return (p for p in self.parameters() if p.requires_grad)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model so :func:`~gdmd_sdxl.loading.build_sdxl` (``model = directory``)
        loads it again.

        Layout: ``gdmd_sdxl.json`` (references to the pipeline and VAE the text encoders and
        VAE come from, the resolution and the LoRA spec), then either ``unet/`` (diffusers
        ``save_pretrained``, safetensors) for a fully fine-tuned model, or the LoRA in
        diffusers' file format (``pytorch_lora_weights.safetensors``) plus a reference to the
        base UNet (``base_unet/`` is written when the base is not a loadable reference).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {
            "format": "gdmd-sdxl",
            "version": 1,
            "pipeline": asdict(self.shared.pipeline),
            "vae": asdict(self.shared.vae_ref) if self.shared.vae_ref is not None else None,
            "resolution": self.resolution,
        }
        if self.lora is None or self.adapter is None:
            self.unet.save_pretrained(directory / "unet", safe_serialization=True)
            metadata["unet"] = {"kind": "full", "path": "unet"}
        else:
            save_lora_file(self.unet, self.adapter, directory)
            if self.base is not None:
                base = asdict(self.base)
            else:
                plain_copy(self.unet, self.adapter, merge=False).save_pretrained(
                    directory / "base_unet", safe_serialization=True
                )
                base = {"model": "base_unet", "relative": True}
            metadata["unet"] = {
                "kind": "lora",
                "base": base,
                "lora": {
                    "rank": self.lora.rank,
                    "alpha": self.lora.alpha,
                    "targets": list(self.lora.targets),
                },
            }
        (directory / SAVE_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")

    # ------------------------------------------------------------------ Exportable protocol

    def export(self, directory: Path, format: str, info: ExportInfo) -> list[Path]:
        """Write this (trained student) model for diffusers: ``lora`` (a LoRA file that
        ``StableDiffusionXLPipeline.load_lora_weights`` reads on the base pipeline) or
        ``merged`` (a complete pipeline), each with a model card; the main file first."""
        from gdmd_sdxl.export import export_sdxl

        return export_sdxl(self, Path(directory), format, info)

    # ----------------------------------------------------------------------- LoRA and roles

    def add_lora(self, spec: LoRASpec, generator: torch.Generator) -> None:
        """Give the model its peft LoRA adapter, named after its role (gaussian ``A`` drawn
        from a seed taken from ``generator``, zero ``B``, float32)."""
        if self.adapter is not None:
            raise SDXLConfigError("this sdxl model already has a LoRA adapter")
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        add_adapter(self.unet, self.role, spec, torch.Generator().manual_seed(seed))
        self.adapter, self.lora = self.role, spec

    def apply_role(self) -> None:
        """Freeze a teacher (and set eval mode); make a student/critic trainable."""
        if self.role == "teacher":
            self.requires_grad_(False)
            self.eval()
            return
        for name, param in self.unet.named_parameters():
            param.requires_grad_(self.lora is None or is_lora_key(name))
        self.train()

    # ----------------------------------------------------------------------------- helpers

    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        channels = self.sample_shape[0]
        if x_t.ndim != 4 or x_t.shape[1] != channels:
            raise ContractError(
                f"sdxl predict_x0 expects x_t [B, {channels}, h, w], got {tuple(x_t.shape)}"
            )
        batch = x_t.shape[0]
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ContractError(f"t must have shape [{batch}], got {tuple(t.shape)}")
        missing = set(_COND_KEYS) - set(cond)
        if missing:
            raise ContractError(
                f"sdxl conditioning lacks {sorted(missing)}; build it with encode_prompts"
            )
        for key in _COND_KEYS:
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
    for key in [k for k in state_dict if k.startswith(prefix) and not is_lora_key(k)]:
        del state_dict[key]


def _allow_missing_frozen_weights(module: torch.nn.Module, incompatible_keys: Any) -> None:
    if getattr(module, "lora", None) is None:
        return
    assert isinstance(module, SDXLModel)
    frozen = {"unet." + k for k in module.unet.state_dict() if not is_lora_key(k)}

    def is_frozen(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[i:]) in frozen for i in range(len(parts)))

    incompatible_keys.missing_keys[:] = [
        k for k in incompatible_keys.missing_keys if not is_frozen(k)
    ]
