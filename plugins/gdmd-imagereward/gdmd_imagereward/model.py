"""ImageReward on transformers' BLIP modules: the official checkpoint, mapped key by key.

ImageReward (Xu et al., 2023) scores a prompt-image pair with BLIP: a ViT-L/16 image encoder
whose every output token is layer-normalised, a BERT text encoder that cross-attends to those
tokens in every layer (BLIP's ``med`` "multimodal" mode), and an MLP on the ``[CLS]`` output.
The official scorer (``ImageReward/ImageReward.py``) tokenises to 35 tokens, resizes the
shorter side to 224 and centre-crops (torchvision on PIL), normalises with OpenAI CLIP's mean
and std, and reports ``(mlp(cls) - 0.16717) / 1.03334``.

transformers' ``BlipVisionModel`` and ``BlipTextModel`` mirror BLIP's ``vit.py`` and ``med.py``,
so the official ``ImageReward.pt`` loads into them after renaming the image encoder's keys (the
text encoder's keys are identical). Settings transformers' defaults get wrong for ImageReward
are set explicitly: ViT LayerNorm eps 1e-6, 12 text heads, cross-attention from the image
width, image size 224. The architecture is read from the checkpoint's shapes, so the same code
loads the real model and a tiny test one. The official package and torchvision are not needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdmd.interfaces import BuildContext
from gdmd.rewards.base import BatchedReward
from gdmd.rewards.clip import load_tokenizer
from gdmd.rewards.loading import (
    RewardLoadError,
    check_keys,
    count_blocks,
    first_line,
    load_checkpoint,
    load_strictly,
    resolve_file,
    torch_dtype,
)
from gdmd.rewards.preprocess import ResizeCropNormalize
from gdmd_imagereward.config import CHECKPOINT, HUB_REPO, MED_CONFIG, ImageRewardConfig

__all__ = ["Architecture", "ImageRewardScorer", "build_imagereward", "official_keys"]

WHO = "reward 'imagereward'"
#: ImageReward's normalisation of the MLP output (``ImageReward.py``).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
#: The official scorer's text length.
MAX_LENGTH = 35
_WHAT = (
    f"the official checkpoint file {CHECKPOINT} (from the hub repository {HUB_REPO}) or a "
    f"directory holding it and {MED_CONFIG}"
)
_VISION = "blip.visual_encoder."
_TEXT = "blip.text_encoder."
#: In the checkpoint but not used for scoring (BLIP's contrastive heads, a position buffer).
_UNUSED = re.compile(
    r"^blip\.(vision_proj|text_proj)\.(weight|bias)$|^blip\.text_encoder\.embeddings\.position_ids$"
)
_VISION_BLOCK = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)
#: BLIP ViT key -> transformers ``BlipVisionModel`` key (the rename of transformers' own
#: BLIP conversion script).
_VISION_RENAMES = (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
)
#: The MLP head: Linear layers at these indices of ``mlp.layers`` (dropouts between them).
_HEAD_LINEARS = (0, 2, 4, 6, 7)
_HEAD_WIDTHS = (1024, 128, 64, 16, 1)
#: Tensors the architecture is read from.
_SHAPE_KEYS = (
    _VISION + "cls_token",
    _VISION + "pos_embed",
    _VISION + "patch_embed.proj.weight",
    _VISION + "blocks.0.mlp.fc1.weight",
    _TEXT + "embeddings.word_embeddings.weight",
    _TEXT + "embeddings.position_embeddings.weight",
    _TEXT + "encoder.layer.0.intermediate.dense.weight",
    "mlp.layers.0.weight",
)


@dataclass(frozen=True)
class Architecture:
    """The shape of an ImageReward model, read from its checkpoint and ``med_config.json``."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_mlp: int
    vision_heads: int
    vocab_size: int
    max_positions: int
    text_width: int
    text_layers: int
    text_mlp: int
    text_heads: int
    text_eps: float
    text_act: str

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, torch.Tensor],
        med: Mapping[str, Any],
        vision_heads: int,
        where: Any,
    ) -> Architecture:
        missing = [k for k in _SHAPE_KEYS if k not in state]
        if missing:
            raise RewardLoadError(
                f"{WHO}: the checkpoint {where} is not an ImageReward state dict: missing "
                f"key(s) {', '.join(missing)}"
            )
        patch = state[_VISION + "patch_embed.proj.weight"]
        grid = round((state[_VISION + "pos_embed"].shape[1] - 1) ** 0.5)
        words = state[_TEXT + "embeddings.word_embeddings.weight"]
        arch = cls(
            image_size=int(grid * patch.shape[-1]),
            patch_size=int(patch.shape[-1]),
            vision_width=int(patch.shape[0]),
            vision_layers=count_blocks(state, _VISION + "blocks."),
            vision_mlp=int(state[_VISION + "blocks.0.mlp.fc1.weight"].shape[0]),
            vision_heads=vision_heads,
            vocab_size=int(words.shape[0]),
            max_positions=int(state[_TEXT + "embeddings.position_embeddings.weight"].shape[0]),
            text_width=int(words.shape[1]),
            text_layers=count_blocks(state, _TEXT + "encoder.layer."),
            text_mlp=int(state[_TEXT + "encoder.layer.0.intermediate.dense.weight"].shape[0]),
            text_heads=int(med.get("num_attention_heads", 12)),
            text_eps=float(med.get("layer_norm_eps", 1e-12)),
            text_act=str(med.get("hidden_act", "gelu")),
        )
        for tower, width, heads, key in (
            ("image", arch.vision_width, arch.vision_heads, "vision_heads"),
            ("text", arch.text_width, arch.text_heads, f"num_attention_heads of {MED_CONFIG}"),
        ):
            if width % heads:
                raise RewardLoadError(
                    f"{WHO}: {key} = {heads} does not divide the {tower} encoder's width {width}"
                )
        return arch


class ImageRewardNetwork(nn.Module):
    """BLIP image encoder, cross-attending text encoder and ImageReward's MLP head."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        self.vision = BlipVisionModel(
            BlipVisionConfig(
                hidden_size=arch.vision_width,
                intermediate_size=arch.vision_mlp,
                num_hidden_layers=arch.vision_layers,
                num_attention_heads=arch.vision_heads,
                image_size=arch.image_size,
                patch_size=arch.patch_size,
                hidden_act="gelu",
                layer_norm_eps=1e-6,
            )
        )
        # is_decoder builds the cross-attention layers; forward keeps the default
        # is_decoder=False, i.e. BLIP's bidirectional "multimodal" text encoder.
        self.text = BlipTextModel(
            BlipTextConfig(
                vocab_size=arch.vocab_size,
                hidden_size=arch.text_width,
                encoder_hidden_size=arch.vision_width,
                intermediate_size=arch.text_mlp,
                num_hidden_layers=arch.text_layers,
                num_attention_heads=arch.text_heads,
                max_position_embeddings=arch.max_positions,
                layer_norm_eps=arch.text_eps,
                hidden_act=arch.text_act,
                is_decoder=True,
                pad_token_id=0,
                bos_token_id=None,
                eos_token_id=None,
                sep_token_id=None,
            ),
            add_pooling_layer=False,
        )
        layers: list[nn.Module] = []
        width = arch.text_width
        for index, out in zip(_HEAD_LINEARS, _HEAD_WIDTHS, strict=True):
            while len(layers) < index:
                layers.append(nn.Identity())  # where the official dropouts sit (off in eval)
            layers.append(nn.Linear(width, out))
            width = out
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(*layers)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        # BlipVisionModel's last_hidden_state has post_layernorm on every token, as BLIP's ViT.
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
        ).last_hidden_state
        return self.mlp.layers(text[:, 0]).squeeze(-1)


def official_keys(arch: Architecture, text_keys: list[str]) -> list[str]:
    """Every tensor the official checkpoint holds that scoring needs."""
    vision = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    vision += [f"blocks.{i}.{k}" for i in range(arch.vision_layers) for k in _VISION_BLOCK]
    vision += ["norm.weight", "norm.bias"]
    head = [f"mlp.layers.{i}.{p}" for i in _HEAD_LINEARS for p in ("weight", "bias")]
    return [_VISION + k for k in vision] + [_TEXT + k for k in text_keys] + head


def _rename_vision(key: str) -> str:
    for pattern, replacement in _VISION_RENAMES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    raise KeyError(key)


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys (as checked by :func:`official_keys`) -> :class:`ImageRewardNetwork` keys."""
    out = {}
    for key, value in state.items():
        if _UNUSED.match(key):
            continue
        if key.startswith(_VISION):
            out["vision." + _rename_vision(key.removeprefix(_VISION))] = value
        elif key.startswith(_TEXT):
            out["text." + key.removeprefix(_TEXT)] = value
        else:
            out[key] = value
    return out


class ImageRewardScorer(BatchedReward):
    """The ``imagereward`` reward: ImageReward's normalised score of each image and prompt."""

    def __init__(
        self,
        network: ImageRewardNetwork,
        tokenizer: Any,
        transform: ResizeCropNormalize,
        *,
        batch_size: int,
    ) -> None:
        device = next(network.parameters()).device
        super().__init__("imagereward", device, batch_size)
        self.network = network.eval().requires_grad_(False)
        self.dtype = next(network.parameters()).dtype
        self.tokenizer = tokenizer
        self.transform = transform

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The official tokenisation: padded to 35 tokens, truncated keeping ``[SEP]``."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        pixels = self.transform(images.float()).to(self.dtype)
        raw = self.network(pixels, tokens["input_ids"], tokens["attention_mask"]).float()
        return (raw - SCORE_MEAN) / SCORE_STD


def _read_med_config(config: ImageRewardConfig, checkpoint: Path) -> dict[str, Any]:
    if config.med_config is not None:
        path: Path | None = Path(config.med_config).expanduser()
        assert path is not None
        if not path.is_file():
            raise RewardLoadError(f"{WHO}: med_config = {config.med_config!r} is not a file")
    else:
        source = config.model or HUB_REPO
        local = Path(source).expanduser()
        if local.is_file():
            beside = local.parent / MED_CONFIG
            path = beside if beside.is_file() else None
        else:
            path = resolve_file(
                source,
                MED_CONFIG,
                who=WHO,
                key="model",
                revision=config.revision,
                what=_WHAT,
                required=False,
            )
    if path is None:
        return {}
    try:
        med = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RewardLoadError(f"{WHO}: cannot read {path}: {first_line(err)}") from err
    if not isinstance(med, dict):
        raise RewardLoadError(f"{WHO}: {path} is not a JSON object")
    return med


def _blip_tokenizer(config: ImageRewardConfig) -> Any:
    """bert-base-uncased WordPiece plus BLIP's ``[DEC]`` and ``[ENC]`` (ids 30522, 30523)."""
    tokenizer = load_tokenizer(config.tokenizer, who=WHO, key="tokenizer", revision=None)
    if "[DEC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def build_imagereward(config: ImageRewardConfig, ctx: BuildContext) -> ImageRewardScorer:
    """The ``imagereward`` reward from the official ``ImageReward.pt``."""
    path, state = load_checkpoint(
        config.model or HUB_REPO, CHECKPOINT, who=WHO, revision=config.revision, what=_WHAT
    )
    med = _read_med_config(config, path)
    arch = Architecture.from_state_dict(state, med, config.vision_heads, path)
    network = ImageRewardNetwork(arch)
    text_keys = list(network.text.state_dict())
    needed = official_keys(arch, text_keys)
    unused = [k for k in state if _UNUSED.match(k)]
    check_keys(state, needed + unused, who=WHO, where=path)
    load_strictly(network, convert_state_dict(state), who=WHO, where=path)
    del state
    network = network.to(device=ctx.device, dtype=torch_dtype(config.dtype))
    tokenizer = _blip_tokenizer(config)
    if len(tokenizer) > arch.vocab_size:
        raise RewardLoadError(
            f"{WHO}: the tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens, more than "
            f"the checkpoint's {arch.vocab_size} embeddings"
        )
    size = arch.image_size
    transform = ResizeCropNormalize(size, (size, size), crop_offsets="round")
    return ImageRewardScorer(network, tokenizer, transform, batch_size=config.batch_size)
