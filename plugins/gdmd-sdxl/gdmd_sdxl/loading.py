"""Building SDXL models: loading a diffusers pipeline (optionally with another VAE) or a saved
gdmd model, and copying the teacher's UNet for a student or critic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gdmd.hub import access_denied, access_hint, dtype_kwarg, first_line
from gdmd.interfaces import BuildContext
from gdmd_sdxl.common import (
    HUB_ID,
    LORA_WEIGHTS,
    OFFLINE_HINT,
    ROLES,
    SAVE_METADATA,
    ModelRef,
    SDXLConfigError,
    SDXLLoadError,
    SDXLPipeline,
    UNet,
)
from gdmd_sdxl.components import SDXLSharedComponents
from gdmd_sdxl.config import SDXLConfig
from gdmd_sdxl.lora import LoRASpec, adapter_weights, plain_copy
from gdmd_sdxl.model import SDXLModel

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_sdxl(config: SDXLConfig, ctx: BuildContext) -> SDXLModel:
    """Build an SDXL teacher, student or critic.

    The role is ``ctx.components["role"]`` (``"teacher"`` when absent). With
    ``ctx.components["init_from"]`` an :class:`SDXLModel`, the new model shares its text
    encoders, tokenizers and VAE by reference and gets a copy of its UNet (any LoRA merged in,
    in float32); otherwise the pipeline is loaded from ``config.model``. Then this config's LoRA
    is added if ``lora_rank`` is set, and the role decides what trains: nothing for the
    teacher, the LoRA matrices or the whole UNet otherwise.
    """
    role = ctx.components.get("role", "teacher")
    if role not in ROLES:
        raise SDXLConfigError(f"unknown role {role!r} for an sdxl model; use one of {ROLES}")
    if role == "teacher" and config.lora_rank is not None:
        raise SDXLConfigError(
            "lora_rank is set for the teacher, but the teacher is frozen; set it on the "
            "student or critic"
        )
    dtype = _DTYPES[config.dtype] if config.dtype is not None else ctx.dtype
    source = ctx.components.get("init_from")
    if source is not None:
        loaded = _from_source(config, role, source, dtype, ctx.device)
    else:
        if config.model is None:
            raise SDXLConfigError(
                f"the sdxl {role} needs `model` (a hub id or local pipeline directory) "
                "unless it has init_from"
            )
        loaded = _load(config, dtype, ctx.device)

    model = SDXLModel(
        loaded.unet,
        loaded.shared,
        role=role,
        resolution=config.resolution or loaded.resolution,
        compute_dtype=dtype,
        base=loaded.base,
    )
    if loaded.lora is not None:
        spec, weights = loaded.lora
        if config.lora_rank is not None and config.lora_rank != spec.rank:
            raise SDXLConfigError(
                f"{config.model} holds LoRA weights of rank {spec.rank}, but lora_rank is "
                f"{config.lora_rank}; leave lora_rank unset to continue from them"
            )
        model.add_lora(spec, ctx.generator)
        _load_lora_weights(model, weights, config.model or "")
    elif config.lora_rank is not None:
        alpha = config.lora_alpha if config.lora_alpha is not None else float(config.lora_rank)
        model.add_lora(LoRASpec(config.lora_rank, alpha, config.lora_targets), ctx.generator)
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.apply_role()
    if model.role != "teacher" and model.lora is None:
        model.base = None  # fully trainable: its weights will leave any saved copy behind
    return model


@dataclass
class _Loaded:
    shared: SDXLSharedComponents
    unet: UNet
    base: ModelRef | None
    lora: tuple[LoRASpec, dict[str, torch.Tensor]] | None
    resolution: int | None


def _from_source(
    config: SDXLConfig, role: str, source: Any, dtype: torch.dtype, device: torch.device
) -> _Loaded:
    """A copy of the source's UNet (its LoRA merged in) on its shared components."""
    if not isinstance(source, SDXLModel):
        raise SDXLConfigError(
            f"an sdxl {role} can only init_from another sdxl model, got {type(source).__name__}"
        )
    _check_same_pipeline(config, source)
    unet = plain_copy(source.unet, source.adapter, merge=True, dtype=dtype).to(device)
    # With LoRA merged in, the copy matches no saved weights.
    base = source.base if source.lora is None else None
    return _Loaded(source.shared, unet, base, None, source.resolution)


def _check_same_pipeline(config: SDXLConfig, source: SDXLModel) -> None:
    """With init_from, the pipeline fields may only repeat the source's (the encoders are its)."""
    ref, vae = source.shared.pipeline, source.shared.vae_ref
    for key, mine, theirs in (
        ("model", config.model, ref.model),
        ("revision", config.revision, ref.revision),
        ("variant", config.variant, ref.variant),
        ("vae", config.vae, vae.model if vae is not None else None),
    ):
        if mine is None or mine == theirs:
            continue
        if theirs is not None and _same_local_dir(mine, theirs):
            continue
        raise SDXLConfigError(
            f"{key} = {mine!r} differs from the init_from model's {theirs!r}; a model built "
            f"with init_from shares that model's pipeline and VAE, so leave {key} unset"
        )


def _same_local_dir(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _local_or_hub(name: str, what: str) -> str:
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if not HUB_ID.match(name):
        raise SDXLLoadError(
            f"sdxl {what} {name!r} not found: no such directory, and it is not a hub id. "
            f"{OFFLINE_HINT}"
        )
    return name


def _load(config: SDXLConfig, dtype: torch.dtype, device: torch.device) -> _Loaded:
    """Load a diffusers SDXL pipeline, or a folder written by :meth:`SDXLModel.save_pretrained`."""
    assert config.model is not None
    local = Path(config.model).expanduser()
    saved = _read_saved_metadata(local)
    vae_name = config.vae
    if saved is None:
        model = _local_or_hub(config.model, "model")
        pipeline_ref = ModelRef(model, config.revision, config.variant)
        unet_ref: ModelRef | None = ModelRef(
            model, config.revision, config.variant, subfolder="unet"
        )
        unet, lora, resolution = None, None, None
    else:
        root = local.resolve()
        pipeline_ref = ModelRef(**saved["pipeline"])
        if vae_name is None and saved.get("vae") is not None:
            vae_name = saved["vae"]["model"]
        entry = saved["unet"]
        lora = None
        if entry["kind"] == "full":
            weights = ModelRef(str(root), subfolder=entry["path"])
        else:
            fields = dict(entry["base"])
            if fields.pop("relative", False):
                fields["model"] = str(root / fields["model"])
            weights = ModelRef(**fields)
            lora = _read_saved_lora(root, entry)
        pipeline_unet = ModelRef(
            pipeline_ref.model, pipeline_ref.revision, pipeline_ref.variant, "unet"
        )
        unet = None if weights == pipeline_unet else _load_unet(weights, dtype)
        # Only the pipeline's own UNet is a lasting reference: a save directory such as a
        # checkpoint may be deleted, so a model loaded from one writes its base out in full.
        unet_ref = pipeline_unet if unet is None else None
        resolution = saved.get("resolution")
    vae_ref = ModelRef(_local_or_hub(vae_name, "vae")) if vae_name is not None else None
    vae = _load_vae(vae_ref, dtype) if vae_ref is not None else None
    pipe = _load_pipeline(pipeline_ref, dtype, unet=unet, vae=vae)
    return _Loaded(
        _shared_from(pipe, pipeline_ref, vae_ref, dtype, device),
        pipe.unet.to(device),
        unet_ref,
        lora,
        resolution,
    )


def _read_saved_metadata(directory: Path) -> dict[str, Any] | None:
    path = directory / SAVE_METADATA
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text())
        if metadata.get("format") != "gdmd-sdxl":
            raise ValueError(f"format is {metadata.get('format')!r}, not 'gdmd-sdxl'")
        return dict(metadata)
    except (OSError, ValueError) as err:
        raise SDXLLoadError(f"cannot read {path}: {err}") from err


def _read_saved_lora(
    root: Path, entry: dict[str, Any]
) -> tuple[LoRASpec, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    try:
        spec = entry["lora"]
        weights = load_file(str(root / LORA_WEIGHTS))
        weights = {k.removeprefix("unet."): v for k, v in weights.items() if k.startswith("unet.")}
        return LoRASpec(int(spec["rank"]), float(spec["alpha"]), tuple(spec["targets"])), weights
    except (OSError, ValueError, KeyError) as err:
        raise SDXLLoadError(f"cannot read the LoRA weights saved in {root}: {err}") from err


def _load_lora_weights(model: SDXLModel, weights: dict[str, torch.Tensor], where: str) -> None:
    assert model.adapter is not None
    expected = adapter_weights(model.unet, model.adapter)
    if set(weights) != set(expected) or any(
        weights[k].shape != p.shape for k, p in expected.items()
    ):
        missing = sorted(set(expected) - set(weights))[:3]
        extra = sorted(set(weights) - set(expected))[:3]
        raise SDXLLoadError(
            f"the LoRA weights in {where} do not fit the UNet "
            f"(missing e.g. {missing}, unexpected e.g. {extra})"
        )
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(weights[name])


def _describe(ref: ModelRef) -> str:
    extra = "".join(
        f", {k}={v!r}" for k, v in (("revision", ref.revision), ("variant", ref.variant)) if v
    )
    sub = f" (subfolder {ref.subfolder!r})" if ref.subfolder else ""
    return f"{ref.model!r}{extra}{sub}"


def _load_pipeline(
    ref: ModelRef, dtype: torch.dtype, unet: UNet | None = None, vae: Any | None = None
) -> SDXLPipeline:
    from diffusers import StableDiffusionXLPipeline

    local = Path(ref.model)
    if local.is_dir():
        index = local / "model_index.json"
        if not index.is_file():
            raise SDXLLoadError(
                f"{ref.model} is not a diffusers pipeline directory (no model_index.json). "
                f"{OFFLINE_HINT}"
            )
        class_name = str(json.loads(index.read_text()).get("_class_name", ""))
        if not class_name.startswith("StableDiffusionXL"):
            raise SDXLLoadError(
                f"{ref.model} holds a {class_name or 'unknown'} pipeline, not Stable Diffusion XL"
            )
    overrides: dict[str, Any] = {}
    if unet is not None:
        overrides["unet"] = unet
    if vae is not None:
        overrides["vae"] = vae
    try:
        return StableDiffusionXLPipeline.from_pretrained(
            ref.model,
            revision=ref.revision,
            variant=ref.variant,
            **dtype_kwarg(dtype),
            **overrides,
        )
    except (OSError, ValueError) as err:
        raise SDXLLoadError(
            f"cannot load the SDXL pipeline {_describe(ref)}: {first_line(err)}. "
            f"{_hint(err, ref)}"
        ) from err


def _load_unet(ref: ModelRef, dtype: torch.dtype) -> UNet:
    from diffusers import UNet2DConditionModel

    try:
        return UNet2DConditionModel.from_pretrained(
            ref.model,
            subfolder=ref.subfolder,
            revision=ref.revision,
            variant=ref.variant,
            **dtype_kwarg(dtype),
        )
    except (OSError, ValueError) as err:
        raise SDXLLoadError(
            f"cannot load the SDXL UNet {_describe(ref)}: {first_line(err)}. {_hint(err, ref)}"
        ) from err


def _load_vae(ref: ModelRef, dtype: torch.dtype) -> Any:
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(ref.model, **dtype_kwarg(dtype))
    except (OSError, ValueError) as err:
        raise SDXLLoadError(
            f"cannot load the VAE {_describe(ref)} (`vae` must name a folder or hub repository "
            f"holding an AutoencoderKL at its root, such as madebyollin/sdxl-vae-fp16-fix): "
            f"{first_line(err)}. {_hint(err, ref)}"
        ) from err


def _hint(err: BaseException, ref: ModelRef) -> str:
    """The offline hint, or, when the hub refused access, how to get it."""
    return access_hint(ref.model) if access_denied(err) else OFFLINE_HINT


def _shared_from(
    pipe: SDXLPipeline,
    ref: ModelRef,
    vae_ref: ModelRef | None,
    dtype: torch.dtype,
    device: torch.device,
) -> SDXLSharedComponents:
    vae = pipe.vae
    # As the SDXL pipeline does before decoding: SDXL's own VAE overflows in float16
    # (force_upcast), so it stays float32; the fp16-fix VAE (force_upcast false) does not.
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
    for module in (pipe.text_encoder, pipe.text_encoder_2, vae):
        module.requires_grad_(False).eval().to(device)
    return SDXLSharedComponents(
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        vae=vae,
        scheduler_config=dict(pipe.scheduler.config),
        pipeline=ref,
        vae_ref=vae_ref,
        force_zeros_for_empty_prompt=bool(
            pipe.config.get("force_zeros_for_empty_prompt", True)
        ),
    )
