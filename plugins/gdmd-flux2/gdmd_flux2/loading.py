"""Building FLUX.2 models: loading a diffusers Flux2KleinPipeline or a saved gdmd model."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gdmd.hub import access_denied, access_hint, dtype_kwarg, first_line
from gdmd.interfaces import BuildContext
from gdmd_flux2.config import Flux2Config
from gdmd_flux2.model import Flux2Model, LoRASpec, plain_copy
from gdmd_flux2.parts import (
    DTYPES,
    LORA_WEIGHTS,
    ROLES,
    SAVE_METADATA,
    Flux2ConfigError,
    Flux2LoadError,
    Flux2SharedComponents,
    ModelRef,
    pipeline_shift,
)

PIPELINE_CLASS = "Flux2KleinPipeline"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFFLINE_HINT = (
    "If you are offline, set HF_HUB_OFFLINE=1 (so no lookup is attempted) and point `model` at "
    "a local directory holding a diffusers Flux2KleinPipeline (model_index.json, transformer/, "
    "vae/, text_encoder/, tokenizer/, scheduler/), or at a model already in the Hugging Face "
    "cache."
)


def build_flux2(config: Flux2Config, ctx: BuildContext) -> Flux2Model:
    """Build a FLUX.2 teacher, student or critic.

    The role is ``ctx.components["role"]`` (``"teacher"`` when absent). With
    ``ctx.components["init_from"]`` a :class:`Flux2Model`, the new model shares its Qwen3
    encoder, tokenizer and VAE by reference and trains a copy of its transformer (any LoRA of
    the source merged in); otherwise the pipeline is loaded from ``config.model``. Then the
    config's LoRA is added if ``lora_rank`` is set, and the role decides what trains: nothing
    for the teacher, the LoRA matrices or the whole transformer otherwise.
    """
    role = ctx.components.get("role", "teacher")
    if role not in ROLES:
        raise Flux2ConfigError(f"unknown role {role!r} for a flux2 model; use one of {ROLES}")
    if role == "teacher" and config.lora_rank is not None:
        raise Flux2ConfigError(
            "lora_rank is set for the teacher, but the teacher is frozen; set it on the "
            "student or critic"
        )
    dtype = DTYPES[config.dtype] if config.dtype is not None else ctx.dtype
    source = ctx.components.get("init_from")
    if source is not None:
        loaded = _from_source(config, role, source, dtype, ctx.device)
    elif config.model is None:
        raise Flux2ConfigError(
            f"the flux2 {role} needs `model` (a hub id or local pipeline directory) unless it "
            "has init_from"
        )
    else:
        loaded = _load(config, dtype, ctx.device)

    shared = loaded.shared
    resolution = config.resolution or loaded.resolution or 128 * shared.vae_scale_factor
    if config.shift is not None:
        shift = config.shift
    elif loaded.shift is not None and config.resolution in (None, loaded.resolution):
        shift = loaded.shift
    else:
        tokens = (resolution // (2 * shared.vae_scale_factor)) ** 2
        shift = pipeline_shift(shared.scheduler_config, tokens, config.shift_steps)
    # Text settings: the config's when written, else the source's (init_from or a saved
    # model), so every role of a run encodes prompts alike.
    chosen = config.model_fields_set
    length = config.max_sequence_length
    if "max_sequence_length" not in chosen and loaded.max_sequence_length is not None:
        length = loaded.max_sequence_length
    layers = config.text_encoder_layers
    if "text_encoder_layers" not in chosen and loaded.text_encoder_layers is not None:
        layers = loaded.text_encoder_layers
    model = Flux2Model(
        loaded.transformer,
        shared,
        role=role,
        resolution=resolution,
        shift=shift,
        max_sequence_length=length,
        text_encoder_layers=layers,
        compute_dtype=dtype,
        base=loaded.base,
    )
    if loaded.lora is not None:
        spec, weights = loaded.lora
        if config.lora_rank is not None and config.lora_rank != spec.rank:
            raise Flux2ConfigError(
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
        model.base = None  # fully trainable: its weights will leave the pipeline's behind
    return model


@dataclass
class _Loaded:
    shared: Flux2SharedComponents
    transformer: Any
    base: ModelRef | None
    lora: tuple[LoRASpec, dict[str, torch.Tensor]] | None
    resolution: int | None
    shift: float | None
    max_sequence_length: int | None = None
    text_encoder_layers: tuple[int, ...] | None = None


def _from_source(
    config: Flux2Config, role: str, source: Any, dtype: torch.dtype, device: torch.device
) -> _Loaded:
    """The source's shared components and a frozen copy of its transformer (LoRA merged)."""
    if not isinstance(source, Flux2Model):
        raise Flux2ConfigError(
            f"a flux2 {role} can only init_from another flux2 model, got {type(source).__name__}"
        )
    ref = source.shared.pipeline
    for key, mine, theirs in (
        ("model", config.model, ref.model),
        ("revision", config.revision, ref.revision),
        ("variant", config.variant, ref.variant),
    ):
        if mine is None or mine == theirs or (key == "model" and _same_dir(mine, ref.model)):
            continue
        raise Flux2ConfigError(
            f"{key} = {mine!r} differs from the init_from model's {theirs!r}; a model built "
            f"with init_from shares that model's pipeline, so leave {key} unset"
        )
    transformer = plain_copy(source, merge=True).to(device)
    if transformer.dtype != dtype:
        transformer.to(dtype)
    base = source.base if source.lora is None else None
    return _Loaded(
        source.shared,
        transformer,
        base,
        None,
        source.resolution,
        source.schedule.shift,
        source.max_sequence_length,
        source.text_encoder_layers,
    )


def _same_dir(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _load(config: Flux2Config, dtype: torch.dtype, device: torch.device) -> _Loaded:
    """Load a diffusers Flux2KleinPipeline, or a directory written by ``save_pretrained``."""
    assert config.model is not None
    local = Path(config.model).expanduser()
    saved = _read_saved_metadata(local)
    if saved is None:
        if not local.is_dir() and not _HUB_ID.match(config.model):
            raise Flux2LoadError(
                f"flux2 model {config.model!r} not found: no such directory, and it is not a "
                f"hub id. {_OFFLINE_HINT}"
            )
        name = str(local.resolve()) if local.is_dir() else config.model
        ref = ModelRef(name, config.revision, config.variant)
        pipe = _load_pipeline(ref, dtype)
        return _Loaded(_shared_from(pipe, ref, device), pipe.transformer.to(device), ref, None,
                       None, None)

    root = local.resolve()
    ref = ModelRef(**saved["pipeline"])
    entry = saved["transformer"]
    lora: tuple[LoRASpec, dict[str, torch.Tensor]] | None = None
    transformer = None
    base: ModelRef | None = ref
    if entry["kind"] == "full":
        transformer = _load_transformer(root / entry["path"], dtype)
        base = None
    else:
        if entry["base"] != "pipeline":
            transformer = _load_transformer(root / entry["base"], dtype)
            base = None
        lora = _read_saved_lora(root, entry)
    pipe = _load_pipeline(ref, dtype, transformer)
    return _Loaded(
        _shared_from(pipe, ref, device),
        pipe.transformer.to(device),
        base,
        lora,
        saved.get("resolution"),
        saved.get("shift"),
        saved.get("max_sequence_length"),
        tuple(saved["text_encoder_layers"]) if "text_encoder_layers" in saved else None,
    )


def _read_saved_metadata(directory: Path) -> dict[str, Any] | None:
    path = directory / SAVE_METADATA
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text())
        if metadata.get("format") != "gdmd-flux2":
            raise ValueError(f"format is {metadata.get('format')!r}, not 'gdmd-flux2'")
        return dict(metadata)
    except (OSError, ValueError) as err:
        raise Flux2LoadError(f"cannot read {path}: {err}") from err


def _read_saved_lora(
    root: Path, entry: Mapping[str, Any]
) -> tuple[LoRASpec, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    try:
        spec = entry["lora"]
        weights = load_file(str(root / LORA_WEIGHTS))
        prefix = "transformer."
        weights = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
        return LoRASpec(int(spec["rank"]), float(spec["alpha"]), tuple(spec["targets"])), weights
    except (OSError, ValueError, KeyError) as err:
        raise Flux2LoadError(f"cannot read the LoRA weights saved in {root}: {err}") from err


def _load_lora_weights(model: Flux2Model, weights: Mapping[str, torch.Tensor], where: str) -> None:
    expected = model.lora_weights()
    if set(weights) != set(expected) or any(
        weights[k].shape != p.shape for k, p in expected.items()
    ):
        missing = sorted(set(expected) - set(weights))[:3]
        extra = sorted(set(weights) - set(expected))[:3]
        raise Flux2LoadError(
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


def _load_pipeline(ref: ModelRef, dtype: torch.dtype, transformer: Any = None) -> Any:
    from diffusers import Flux2KleinPipeline

    local = Path(ref.model)
    if local.is_dir():
        index = local / "model_index.json"
        if not index.is_file():
            raise Flux2LoadError(
                f"{ref.model} is not a diffusers pipeline directory (no model_index.json). "
                f"{_OFFLINE_HINT}"
            )
        class_name = json.loads(index.read_text()).get("_class_name", "")
        if class_name != PIPELINE_CLASS:
            raise Flux2LoadError(
                f"{ref.model} holds a {class_name or 'unknown'} pipeline, not {PIPELINE_CLASS} "
                "(FLUX.2 [klein]); FLUX.2 [dev] (Flux2Pipeline, Mistral text encoder, guidance "
                "embedding) is not supported by the flux2 family"
            )
    overrides = {"transformer": transformer} if transformer is not None else {}
    try:
        return Flux2KleinPipeline.from_pretrained(
            ref.model, revision=ref.revision, variant=ref.variant, **dtype_kwarg(dtype),
            **overrides,
        )
    except (OSError, ValueError) as err:
        raise Flux2LoadError(
            f"cannot load the FLUX.2 pipeline {_describe(ref)}: {first_line(err)}. "
            f"{_hint(err, ref)}"
        ) from err


def _load_transformer(directory: Path, dtype: torch.dtype) -> Any:
    from diffusers import Flux2Transformer2DModel

    try:
        return Flux2Transformer2DModel.from_pretrained(str(directory), **dtype_kwarg(dtype))
    except (OSError, ValueError) as err:
        raise Flux2LoadError(
            f"cannot load the FLUX.2 transformer saved in {directory}: {first_line(err)}"
        ) from err


def _hint(err: BaseException, ref: ModelRef) -> str:
    """The offline hint, or, when the hub refused access, how to get it."""
    return access_hint(ref.model) if access_denied(err) else _OFFLINE_HINT


def _shared_from(pipe: Any, ref: ModelRef, device: torch.device) -> Flux2SharedComponents:
    for module in (pipe.text_encoder, pipe.vae):
        module.requires_grad_(False).eval().to(device)
    return Flux2SharedComponents(
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        vae=pipe.vae,
        scheduler_config=dict(pipe.scheduler.config),
        pipeline=ref,
        is_distilled=bool(pipe.config.get("is_distilled", False)),
    )
