"""LoRA on the SDXL UNet through peft: adding one adapter per role, copies without it (merged
in float32 or dropped), and diffusers' LoRA file."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gdmd_sdxl.common import LORA_WEIGHTS, SDXLConfigError, UNet
from gdmd_sdxl.config import DEFAULT_LORA_TARGETS

#: Names of the per-adapter containers peft puts in each LoRA layer (``lora_A[name]``, ...).
_ADAPTER_DICTS = frozenset({"lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector"})


@dataclass(frozen=True)
class LoRASpec:
    """Rank, alpha and target suffixes of one role's LoRA adapter."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def peft_config(self) -> Any:
        """The ``peft.LoraConfig`` of diffusers' own SDXL LoRA training recipe
        (``examples/dreambooth/train_dreambooth_lora_sdxl.py``): gaussian ``A``, zero ``B``."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,  # type: ignore[arg-type]  # peft takes a float alpha
            init_lora_weights="gaussian",
            target_modules=list(self.targets),
        )


def is_lora_key(key: str) -> bool:
    """Whether a parameter name belongs to a peft LoRA adapter."""
    return any(part in _ADAPTER_DICTS for part in key.split(".")[:-1])


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def check_targets(unet: torch.nn.Module, targets: Sequence[str]) -> None:
    """Every target suffix must name an ``nn.Linear`` or ``nn.Conv2d`` of the UNet (peft would
    silently skip one that names nothing)."""
    layers = [n for n, m in unet.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)]
    for target in targets:
        if any(_matches(n, target) for n in layers):
            continue
        hits = any(_matches(n, target) for n, _ in unet.named_modules())
        what = "matches no nn.Linear or nn.Conv2d module" if hits else "matches no module"
        raise SDXLConfigError(
            f"lora_targets entry {target!r} {what} of the SDXL UNet; use suffixes such as "
            f"{', '.join(repr(t) for t in DEFAULT_LORA_TARGETS)}"
        )


def add_adapter(unet: UNet, name: str, spec: LoRASpec, generator: torch.Generator) -> None:
    """Add peft adapter ``name`` to ``unet``: float32 weights, ``A`` drawn from ``generator``
    with peft's gaussian init (``N(0, 1/r^2)``), ``B`` zero."""
    check_targets(unet, spec.targets)
    # peft's init draws from the global RNG: draw nothing from it, and redraw A below from the
    # run's generator so that builds are seeded.
    with torch.random.fork_rng(devices=[]):
        unet.add_adapter(spec.peft_config(), adapter_name=name)
    for param_name, param in unet.named_parameters():
        if not is_lora_key(param_name):
            continue
        # Float32 whatever the base dtype: these are the trained (master) weights, and at a
        # learning rate of 1e-6 bfloat16 weights would barely move.
        param.data = param.data.float()
        if ".lora_A." in param_name:
            drawn = torch.randn(param.shape, generator=generator, device=generator.device)
            param.data.copy_(drawn.to(param.device) / spec.rank)
        else:
            param.data.zero_()


def adapter_weights(unet: UNet, name: str) -> dict[str, torch.nn.Parameter]:
    """``{peft key without the adapter name: weight}``: the keys of diffusers' LoRA files."""
    out = {}
    for param_name, param in unet.named_parameters():
        parts = param_name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in _ADAPTER_DICTS and parts[i + 1] == name:
                out[".".join(parts[: i + 1] + parts[i + 2 :])] = param
                break
    return out


def plain_copy(
    unet: UNet, adapter: str | None, merge: bool, dtype: torch.dtype | None = None
) -> UNet:
    """A copy of ``unet`` without peft layers: ``adapter`` merged into the weights
    (``merge=True``) or dropped, saved in ``dtype`` (default: the base weights' dtype).

    The merge ``W + (alpha / r) B A`` is computed in float32 and rounded once: rounded in
    bfloat16 instead, a delta of about one bfloat16 step of ``W`` (what a learning rate of
    1e-6 gives) would be partly lost.
    """
    plain = copy.deepcopy(unet)
    if getattr(plain, "_hf_peft_config_loaded", False):
        if merge and adapter is not None:
            from peft.tuners.lora import LoraLayer

            with torch.no_grad():
                for module in plain.modules():
                    layer: Any = module
                    if isinstance(module, LoraLayer) and adapter in layer.lora_A:
                        base = layer.get_base_layer()
                        delta = layer.get_delta_weight(adapter).float()
                        merged = base.weight.float() + delta
                        base.weight.data = merged.to(dtype or base.weight.dtype)
        plain.unload_lora()
    if dtype is not None and plain.dtype != dtype:
        plain.to(dtype)
    return plain


def save_lora_file(unet: UNet, adapter: str, directory: str | Path) -> Path:
    """Write ``adapter`` as diffusers' ``pytorch_lora_weights.safetensors`` in ``directory``.

    The format ``StableDiffusionXLPipeline.load_lora_weights`` reads, written by the
    pipeline's own ``save_lora_weights``: keys ``unet.<peft key>`` (adapter name stripped),
    float32, and the adapter's ``LoraConfig`` in the safetensors metadata. Without that
    metadata diffusers would rebuild the config from the tensor shapes with ``lora_alpha = r``,
    silently changing the scale of any LoRA whose alpha is not its rank.
    """
    from diffusers import StableDiffusionXLPipeline

    weights = {
        key: w.detach().float().cpu().contiguous()
        for key, w in adapter_weights(unet, adapter).items()
    }
    directory = Path(directory)
    StableDiffusionXLPipeline.save_lora_weights(
        directory,
        unet_lora_layers=weights,
        unet_lora_adapter_metadata=unet.peft_config[adapter].to_dict(),
        weight_name=LORA_WEIGHTS,
    )
    return directory / LORA_WEIGHTS
