"""LoRA for the SD3 family: peft adapters on the diffusers transformer, one per role.

:class:`AdapterHost` holds one transformer and its adapters (the shared base of ``share_base``),
:func:`_view` gives each role a module tree without the other roles' adapters, and
:func:`save_lora_file` writes one adapter in diffusers' LoRA file format.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gdmd.models.sd3.common import SD3ConfigError, SD3Transformer2DModel
from gdmd.models.sd3_config import DEFAULT_LORA_TARGETS

if TYPE_CHECKING:
    from gdmd.models.sd3.model import SD3Model

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


def _plain_copy(
    model: SD3Model, merge: bool = True, dtype: torch.dtype | None = None
) -> SD3Transformer2DModel:
    """A copy of ``model``'s transformer without peft layers: the model's own LoRA merged into
    the weights (``merge=True``) or dropped, every other role's adapter dropped.

    The merge is ``W + (alpha / r) B A`` computed in float32 and rounded once, to ``dtype``
    (default: ``W``'s dtype). Rounded in bfloat16 instead, a delta of about one bfloat16 step
    of ``W`` (what a learning rate of 1e-6 gives) would be partly lost.
    """
    plain = copy.deepcopy(model.host.transformer)
    if getattr(plain, "_hf_peft_config_loaded", False):
        own = model.adapter
        if merge and own is not None:
            _merge_in_float32(plain, own, model.host.specs[own].scale, dtype)
        plain.unload_lora()
    if dtype is not None and plain.dtype != dtype:
        plain.to(dtype)
    return plain


def _merge_in_float32(
    transformer: SD3Transformer2DModel, adapter: str, scale: float, dtype: torch.dtype | None
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
