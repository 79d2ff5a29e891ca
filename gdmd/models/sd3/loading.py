"""Building SD3 models: loading a diffusers pipeline or a saved gdmd model, sharing a base."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gdmd.hub import access_denied, access_hint, dtype_kwarg, first_line
from gdmd.interfaces import BuildContext
from gdmd.models.sd3.adapters import LORA_WEIGHTS, AdapterHost, LoRASpec, _plain_copy
from gdmd.models.sd3.common import (
    _DTYPES,
    _HUB_ID,
    _OFFLINE_HINT,
    ROLES,
    SAVE_METADATA,
    SD3ConfigError,
    SD3LoadError,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from gdmd.models.sd3.encoders import ModelRef, SD3SharedComponents
from gdmd.models.sd3.model import SD3Model
from gdmd.models.sd3_config import SD3Config


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
    if source is not None:
        loaded = _from_source(config, role, source, dtype, ctx)
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

    model = SD3Model(
        loaded.transformer,
        loaded.shared,
        role=role,
        resolution=config.resolution or loaded.resolution,
        shift=config.shift if config.shift is not None else loaded.shift,
        max_sequence_length=config.max_sequence_length,
        compute_dtype=dtype,
        base=loaded.base,
    )
    _add_lora(model, config, loaded.lora, ctx.generator)
    if config.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    model.apply_role()
    if model.role != "teacher" and model.lora is None:
        model.base = None  # fully trainable: its weights will leave any saved copy behind
    return model


def _from_source(
    config: SD3Config, role: str, source: Any, dtype: torch.dtype, ctx: BuildContext
) -> _Loaded:
    """The parts of a model built with ``init_from``: the source's shared components, and its
    transformer (shared base) or a copy of it with any LoRA merged in."""
    if not isinstance(source, SD3Model):
        raise SD3ConfigError(
            f"an sd3 {role} can only init_from another sd3 model, got {type(source).__name__}"
        )
    _check_same_pipeline(config, source)
    host: AdapterHost | SD3Transformer2DModel
    if _shares_base(config, role, source, dtype, ctx):
        host = source.host
        base = source.base
    else:
        host = _plain_copy(source, merge=True).to(ctx.device)
        if host.dtype != dtype:
            host.to(dtype)
        # With LoRA merged in, the copy matches no saved weights.
        base = source.base if source.lora is None else None
    return _Loaded(source.shared, host, base, None, source.resolution, source.schedule.shift)


def _add_lora(
    model: SD3Model,
    config: SD3Config,
    saved: tuple[LoRASpec, dict[str, torch.Tensor]] | None,
    generator: torch.Generator,
) -> None:
    """Give ``model`` the LoRA it was saved with (and its weights), or the config's new one."""
    if saved is not None:
        spec, weights = saved
        if config.lora_rank is not None and config.lora_rank != spec.rank:
            raise SD3ConfigError(
                f"{config.model} holds LoRA weights of rank {spec.rank}, but lora_rank is "
                f"{config.lora_rank}; leave lora_rank unset to continue from them"
            )
        model.add_lora(spec, generator)
        _load_lora_weights(model, weights, config.model or "")
    elif config.lora_rank is not None:
        alpha = config.lora_alpha if config.lora_alpha is not None else float(config.lora_rank)
        model.add_lora(LoRASpec(config.lora_rank, alpha, config.lora_targets), generator)


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
    has_t5 = source.shared.uses_t5
    if "drop_t5" in config.model_fields_set and config.drop_t5 == has_t5:
        raise SD3ConfigError(
            f"drop_t5 = {str(config.drop_t5).lower()} differs from the init_from model, which "
            f"was loaded {'with' if has_t5 else 'without'} T5; leave drop_t5 unset"
        )
    shared = source.shared
    theirs_encoders = "offload" if shared.offload else "device" if shared.has_encoders else "none"
    if "text_encoders" in config.model_fields_set and config.text_encoders != theirs_encoders:
        raise SD3ConfigError(
            f"text_encoders = {config.text_encoders!r} differs from the init_from model's "
            f"{theirs_encoders!r}; a model built with init_from shares its text encoders, so "
            "leave text_encoders unset"
        )
    if config.prompt_cache is not None and (
        shared.cache_root != Path(config.prompt_cache).expanduser().resolve()
    ):
        raise SD3ConfigError(
            f"prompt_cache = {config.prompt_cache!r} differs from the init_from model's "
            f"{str(shared.cache_root) if shared.cache_root else None!r}; a model built with "
            "init_from shares its text encoders and their cache, so leave prompt_cache unset"
        )


def _same_local_dir(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


@dataclass
class _Loaded:
    shared: SD3SharedComponents
    transformer: AdapterHost | SD3Transformer2DModel
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
        pipe = _load_pipeline(pipeline_ref, dtype, config.drop_t5, encoders=_loads_encoders(config))
        return _Loaded(
            _shared_from(pipe, pipeline_ref, device, config),
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
    pipe = _load_pipeline(
        pipeline_ref, dtype, config.drop_t5, transformer, encoders=_loads_encoders(config)
    )
    # Only the pipeline's own transformer is a lasting reference: a save directory such as a
    # checkpoint may be deleted, so a model loaded from one writes its base out in full.
    base = weights if weights == pipeline_transformer else None
    return _Loaded(
        _shared_from(pipe, pipeline_ref, device, config),
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
    *,
    encoders: bool = True,
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
    if drop_t5 or not encoders:
        overrides.update(text_encoder_3=None, tokenizer_3=None)
    if not encoders:
        overrides.update(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    try:
        return StableDiffusion3Pipeline.from_pretrained(
            ref.model,
            revision=ref.revision,
            variant=ref.variant,
            **dtype_kwarg(dtype),
            **overrides,
        )
    except (OSError, ValueError) as err:
        raise SD3LoadError(
            f"cannot load the SD3 pipeline {_describe(ref)}: {first_line(err)}. "
            f"{_hint(err, ref)}"
        ) from err


def _load_transformer(ref: ModelRef, dtype: torch.dtype) -> SD3Transformer2DModel:
    from diffusers import SD3Transformer2DModel

    try:
        return SD3Transformer2DModel.from_pretrained(
            ref.model,
            subfolder=ref.subfolder,
            revision=ref.revision,
            variant=ref.variant,
            **dtype_kwarg(dtype),
        )
    except (OSError, ValueError) as err:
        where = _describe(ref) + (f" (subfolder {ref.subfolder!r})" if ref.subfolder else "")
        raise SD3LoadError(
            f"cannot load the SD3 transformer {where}: {first_line(err)}. {_hint(err, ref)}"
        ) from err


def _hint(err: BaseException, ref: ModelRef) -> str:
    """The offline hint, or, when the hub refused access, how to get it."""
    return access_hint(ref.model) if access_denied(err) else _OFFLINE_HINT


def _loads_encoders(config: SD3Config) -> bool:
    return config.text_encoders != "none"


def _shared_from(
    pipe: StableDiffusion3Pipeline, ref: ModelRef, device: torch.device, config: SD3Config
) -> SD3SharedComponents:
    offload = config.text_encoders == "offload"
    encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    for module in [*encoders, pipe.vae]:
        if module is not None:
            module.requires_grad_(False).eval()
            module.to("cpu" if offload and module is not pipe.vae else device)
    cache = Path(config.prompt_cache).expanduser().resolve() if config.prompt_cache else None
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
        compute_device=torch.device(device),
        uses_t5=not config.drop_t5,
        offload=offload,
        cache_root=cache,
    )
