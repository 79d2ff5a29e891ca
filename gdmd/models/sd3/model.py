"""The SD3 transformer as a gdmd :class:`~gdmd.interfaces.DiffusionModel` (one role)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gdmd.errors import ContractError
from gdmd.interfaces import Conditioning, ExportInfo
from gdmd.models.sd3.adapters import (
    AdapterHost,
    LoRASpec,
    _is_lora_key,
    _plain_copy,
    _view,
    save_lora_file,
)
from gdmd.models.sd3.common import (
    ROLES,
    SAVE_METADATA,
    SD3ConfigError,
    SD3Transformer2DModel,
)
from gdmd.models.sd3.encoders import ModelRef, SD3Decoder, SD3SharedComponents
from gdmd.schedules import FlowMatchingSchedule


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

    # ------------------------------------------------------------------ Exportable protocol

    #: What :meth:`export` writes (see :mod:`gdmd.models.sd3.export`).
    export_formats: tuple[str, ...] = ("lora", "merged")

    def export(self, directory: Path, format: str, info: ExportInfo) -> list[Path]:
        """Write this (trained student) model for diffusers: ``lora`` (a LoRA file that
        ``load_lora_weights`` reads on the base pipeline) or ``merged`` (a complete
        pipeline), each with a model card; returns the files written, the main one first."""
        from gdmd.models.sd3.export import export_sd3

        return export_sd3(self, Path(directory), format, info)

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
