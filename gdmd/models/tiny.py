"""The built-in tiny text-conditioned diffusion model family (``tiny-unet``).

A small pixel-space U-Net trained with flow matching. It has two jobs: the teacher of the
CPU-scale benchmark (32x32 RGB images of coloured shapes from prompts such as "a red circle
left of a blue square", about 3M parameters with the defaults), and a model small enough to
run the whole distillation loop in CPU tests in seconds.

Architecture (defaults in brackets):

* a 2x2 pixel-unshuffle of the ``[B, 3, S, S]`` input to ``S/2 x S/2`` with 12 channels;
* a U-Net with one residual block per level on the way down and up [channels 48/96/128 at
  16/8/4 px] and two around an attention block in the middle, skip connections
  concatenated, 2x2 transposed convolutions to upsample; FiLM conditioning of every
  residual block on time + pooled text (Perez et al., 2018); self-attention followed by
  cross-attention to the per-token text states at ``attention_levels`` [the two lowest
  resolutions] and in the middle;
* a word-level text encoder [2 pre-norm transformer layers, width 64] with learned positional
  embeddings, so word order ("left of", colour-shape binding) reaches the image. A learned
  null token is always present among the cross-attention keys, so the empty prompt (the
  unconditional prompt of classifier-free guidance) has something to attend to;
* the network predicts the flow-matching velocity ``eps - x0``; ``forward`` turns it into an
  x0-prediction with the schedule, as the :class:`~gdmd.interfaces.DiffusionModel` contract
  asks.

The conditioning returned by :meth:`TinyDiffusionModel.encode_prompts` holds token ids, not
text features: the text encoder runs inside ``forward`` so it trains with the model.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from gdmd.errors import ContractError, GdmdError
from gdmd.interfaces import BuildContext, Conditioning
from gdmd.models.tiny_config import ARCHITECTURE_FIELDS, DEFAULT_VOCABULARY, TinyUNetConfig
from gdmd.models.tiny_network import TextEncoder, UNet
from gdmd.sampling import sample
from gdmd.schedules import FlowMatchingSchedule

__all__ = [
    "DEFAULT_VOCABULARY",
    "ModelLoadError",
    "PixelDecoder",
    "TinyDiffusionModel",
    "TinyUNetConfig",
    "WordTokenizer",
    "build_tiny_unet",
    "sample",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_FAMILY = "tiny-unet"
_FORMAT_VERSION = 1


class ModelLoadError(GdmdError):
    """A model could not be built from what the recipe names: a missing directory or file,
    an unreadable config, weights that do not match the architecture, or an ``init_from``
    model of the wrong family or architecture."""

    exit_code = 2


class WordTokenizer:
    """Lowercases, splits on non-letters, and maps words to ids.

    Id 0 is ``[PAD]``, 1 is ``[UNK]`` (any word not in the vocabulary), then the vocabulary in
    order. Prompts longer than ``max_tokens`` words are cut; the empty prompt is all padding.
    """

    PAD = 0
    UNK = 1
    SPECIAL_TOKENS = ("[PAD]", "[UNK]")
    _WORD = re.compile(r"[^\W\d_]+")

    def __init__(self, vocabulary: Sequence[str], max_tokens: int) -> None:
        self.vocabulary = list(vocabulary)
        self.max_tokens = max_tokens
        offset = len(self.SPECIAL_TOKENS)
        self._ids = {word: i + offset for i, word in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + len(self.SPECIAL_TOKENS)

    def words(self, prompt: str) -> list[str]:
        return self._WORD.findall(prompt.lower())

    def encode(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, at most ``max_tokens`` of them, without padding."""
        return [self._ids.get(w, self.UNK) for w in self.words(prompt)][: self.max_tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        names = [*self.SPECIAL_TOKENS, *self.vocabulary]
        return [names[i] for i in ids if i != self.PAD]

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens LongTensor [B, max_tokens], mask BoolTensor [B, max_tokens])``."""
        if isinstance(prompts, str):
            raise TypeError("expected a sequence of prompts, got a single str")
        tokens = torch.full((len(prompts), self.max_tokens), self.PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens, tokens != self.PAD


class _ProjectedClamp(torch.autograd.Function):
    """``clamp(x, -1, 1)`` whose gradient never pushes a pixel further out of range.

    The hard clamp's gradient is zero outside ``[-1, 1]``, so a reward could never pull an
    over-saturated pixel back. The identity gradient of a straight-through estimator would, but
    it also lets a reward push a saturated pixel ever further out where it sees no change.
    This keeps the identity gradient inside the range and, outside, only the part that moves
    the pixel back toward it under gradient *descent* of a loss (gdmd's convention).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(-1.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        outward = ((x > 1) & (grad < 0)) | ((x < -1) & (grad > 0))
        return grad.masked_fill(outward, 0.0)


class PixelDecoder:
    """Pixel-space "decoder": model space ``[-1, 1]`` to images ``[0, 1]``.

    ``(clamp(x, -1, 1) + 1) / 2`` in value; see :class:`_ProjectedClamp` for the gradient.
    """

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 4 or latents.shape[1] != 3:
            raise ContractError(
                f"PixelDecoder expects [B, 3, H, W] pixels, got {list(latents.shape)}"
            )
        clamped: torch.Tensor = _ProjectedClamp.apply(latents)
        return (clamped + 1.0) / 2.0

    def __repr__(self) -> str:
        return "PixelDecoder()"


class TinyDiffusionModel(nn.Module):
    """A small text-to-image flow-matching model; implements ``DiffusionModel``.

    ``forward`` (= :meth:`predict_x0`) returns x0-predictions, :meth:`predict_output` the raw
    velocity (for denoising losses). Pixels live in ``[-1, 1]``.
    """

    def __init__(self, config: TinyUNetConfig) -> None:
        super().__init__()
        self.config = config.filled()
        arch = self.config.architecture()
        self.schedule = FlowMatchingSchedule()
        self.sample_shape: tuple[int, ...] = (3, arch["image_size"], arch["image_size"])
        self.decoder = PixelDecoder()
        self.tokenizer = WordTokenizer(arch["vocabulary"], arch["max_tokens"])
        self.text_encoder = TextEncoder(
            self.tokenizer.vocab_size,
            arch["max_tokens"],
            arch["text_width"],
            arch["text_layers"],
            arch["heads"],
        )
        self.unet = UNet(config)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """``{"tokens": LongTensor [B, max_tokens], "mask": BoolTensor [B, max_tokens]}``.

        The empty prompt ``""`` is the unconditional prompt of classifier-free guidance.
        """
        tokens, mask = self.tokenizer(prompts)
        device = self.unet.stem.weight.device
        return {"tokens": tokens.to(device), "mask": mask.to(device)}

    def _check(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        expected = (x_t.shape[0], *self.sample_shape)
        if tuple(x_t.shape) != expected:
            raise ContractError(
                f"tiny-unet expects x_t of shape {list(expected)}, got {list(x_t.shape)}"
            )
        missing = [key for key in ("tokens", "mask") if key not in cond]
        if missing:
            raise ContractError(
                f"tiny-unet conditioning lacks {missing}; build it with encode_prompts()"
            )
        if cond["tokens"].shape[0] != x_t.shape[0]:
            raise ContractError(
                f"tiny-unet got {x_t.shape[0]} samples but {cond['tokens'].shape[0]} prompts"
            )
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if tuple(t.shape) != (x_t.shape[0],):
            raise ContractError(
                f"tiny-unet expects t of shape [{x_t.shape[0]}], got {list(t.shape)}"
            )
        return t

    def _velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        text, text_mask, pooled = self.text_encoder(tokens, mask.bool())
        return self.unet(x_t, t, text.to(x_t.dtype), text_mask, pooled.to(x_t.dtype))

    def predict_output(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """The raw network output: the velocity ``eps - x0`` (``schedule.prediction_type``)."""
        t = self._check(x_t, t, cond)
        return self._velocity(x_t, t, cond["tokens"], cond["mask"])

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """x0-prediction ``[B, 3, S, S]``; with ``guidance_scale`` not ``None`` or 1,
        classifier-free guidance ``uncond + w (cond - uncond)`` from one batched forward."""
        t = self._check(x_t, t, cond)
        tokens, mask = cond["tokens"], cond["mask"]
        if guidance_scale is None or guidance_scale == 1.0:
            return self.schedule.to_x0(x_t, t, self._velocity(x_t, t, tokens, mask))
        empty_tokens = torch.full_like(tokens, WordTokenizer.PAD)
        velocity = self._velocity(
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            torch.cat([empty_tokens, tokens]),
            torch.cat([torch.zeros_like(mask), mask]),
        )
        x0_uncond, x0_cond = self.schedule.to_x0(
            torch.cat([x_t, x_t]), torch.cat([t, t]), velocity
        ).chunk(2)
        return x0_uncond + guidance_scale * (x0_cond - x0_uncond)

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        result: torch.Tensor = self(x_t, t, cond, guidance_scale)
        return result

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """All parameters (``trainable = "all"``)."""
        return self.parameters()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` (architecture) and ``model.safetensors`` (weights).

        Each file is written to a temporary name and renamed, so a crash never leaves a
        half-written file under the final name.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        document = {
            "family": _FAMILY,
            "format_version": _FORMAT_VERSION,
            "config": self.config.model_dump(mode="json", include=set(ARCHITECTURE_FIELDS)),
        }
        config_tmp = directory / f".{CONFIG_FILE}.tmp"
        config_tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        weights_tmp = directory / f".{WEIGHTS_FILE}.tmp"
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(weights_tmp), metadata={"family": _FAMILY})
        os.replace(weights_tmp, directory / WEIGHTS_FILE)
        os.replace(config_tmp, directory / CONFIG_FILE)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TinyDiffusionModel:
        """Load a model written by :meth:`save_pretrained` (on the CPU).

        Raises :class:`ModelLoadError`, naming the path, for a missing directory or file, a
        config that is not a tiny-unet config, or weights that do not fit the architecture.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise ModelLoadError(f"tiny-unet model directory {str(directory)!r} does not exist")
        config = _read_config(directory / CONFIG_FILE)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise ModelLoadError(f"tiny-unet weights file {str(weights_path)!r} does not exist")
        try:
            weights = load_file(str(weights_path))
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(
                f"tiny-unet weights {str(weights_path)!r} are not a readable safetensors file: "
                f"{error}"
            ) from error
        model = cls(config)
        _check_weights(model, weights, weights_path)
        model.load_state_dict(weights)
        return model


def _read_config(path: Path) -> TinyUNetConfig:
    if not path.is_file():
        raise ModelLoadError(f"tiny-unet config {str(path)!r} does not exist")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(
            f"tiny-unet config {str(path)!r} is not valid JSON: {error}"
        ) from error
    if not isinstance(document, dict) or document.get("family") != _FAMILY:
        raise ModelLoadError(f"{str(path)!r} is not a tiny-unet config (no family = {_FAMILY!r})")
    if document.get("format_version") != _FORMAT_VERSION:
        raise ModelLoadError(
            f"{str(path)!r} has format_version {document.get('format_version')!r}; this gdmd "
            f"reads version {_FORMAT_VERSION}"
        )
    try:
        return TinyUNetConfig.model_validate(document.get("config", {}))
    except ValidationError as error:
        raise ModelLoadError(f"tiny-unet config {str(path)!r} is invalid:\n{error}") from error


def _check_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{name} {list(weights[name].shape)} (expected {list(tensor.shape)})"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    problems = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise ModelLoadError(
            f"tiny-unet weights {str(path)!r} do not match the architecture in its "
            f"{CONFIG_FILE}: " + "; ".join(problems)
        )


def _adopt(requested: TinyUNetConfig, source: TinyUNetConfig, where: str) -> TinyUNetConfig:
    """The architecture of ``source`` with the runtime options of ``requested``.

    Architecture fields the recipe set explicitly must agree with ``source``.
    """
    wanted, actual = requested.architecture(), source.architecture()
    conflicts = [
        f"{name} = {wanted[name]!r} (it has {actual[name]!r})"
        for name in ARCHITECTURE_FIELDS
        if getattr(requested, name) is not None and wanted[name] != actual[name]
    ]
    if conflicts:
        raise ModelLoadError(
            f"tiny-unet config disagrees with {where}: "
            + "; ".join(conflicts)
            + ". Leave these fields out to use the model's own architecture."
        )
    full = source.filled()
    return requested.model_copy(update={name: getattr(full, name) for name in ARCHITECTURE_FIELDS})


def build_tiny_unet(config: TinyUNetConfig, ctx: BuildContext) -> TinyDiffusionModel:
    """Factory of the ``tiny-unet`` family (roles: teacher, student, critic).

    In order of precedence: a trainable deep copy of ``ctx.components["init_from"]``; the
    model saved at ``config.model``; a random initialisation seeded from ``ctx.generator``
    (the global RNG is left as it was). The model is moved to ``ctx.device``; it stays in
    float32 (``ctx.dtype`` is not applied: this family trains in full precision on CPU).
    """
    init_from = ctx.components.get("init_from")
    if init_from is not None:
        if not isinstance(init_from, TinyDiffusionModel):
            raise ModelLoadError(
                f"tiny-unet can only initialise from another tiny-unet model, got "
                f"{type(init_from).__name__}"
            )
        # ``model`` may be inherited from the teacher's table: the copy of the built teacher
        # is what counts, so it is not loaded again.
        model = copy.deepcopy(init_from)
        model.config = _adopt(config, init_from.config, "the init_from model")
        model.requires_grad_(True).train()
        return model.to(ctx.device)
    if config.model is not None:
        model = TinyDiffusionModel.from_pretrained(config.model)
        model.config = _adopt(config, model.config, f"the model saved in {config.model!r}")
        return model.to(ctx.device)
    seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator, device=ctx.generator.device))
    # Seeds only the CPU generator inside the fork (torch.manual_seed would also reseed the
    # CUDA generators, which fork_rng(devices=[]) does not restore). Built on the CPU, so the
    # weights are the same whatever ctx.device is.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        model = TinyDiffusionModel(config)
    return model.to(ctx.device)
