"""CLIP-family rewards on transformers' CLIP: ``clip`` (CLIPScore) and ``pickscore``.

Both embed the image and the prompt with a ``transformers.CLIPModel``, L2-normalise the two
embeddings and score their cosine, scaled:

* ``clip``: ``100 * cos`` per sample, the CLIPScore of Hessel et al. (2021) as torchmetrics
  computes it (before its clamp of the *mean* at 0), on ``openai/clip-vit-large-patch14``;
* ``pickscore``: ``logit_scale.exp() * cos`` with the checkpoint's learned scale (about 100),
  on ``yuvalkirstain/PickScore_v1`` with the tokenizer and image processor of the model it
  fine-tunes, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, as the PickScore README does.

The image side is ``CLIPImageProcessor``'s geometry done on tensors
(:class:`gdmd.rewards.preprocess.ResizeCropNormalize`, read from the processor's
``preprocessor_config.json``), so gradients reach the pixels. The towers are called directly
(``vision_model`` -> ``visual_projection``), not ``get_image_features``, whose return type
changed in transformers 5.

:class:`CLIPScorer` is public: the ``hpsv2`` plugin scores with it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gdmd.interfaces import BuildContext
from gdmd.rewards.base import BatchedReward, PromptCache
from gdmd.rewards.clip_config import CLIPRewardConfig, CLIPScoreConfig, PickScoreConfig
from gdmd.rewards.loading import (
    RewardLoadError,
    describe_keys,
    first_line,
    is_hub_id,
    offline_hint,
    resolve_file,
    torch_dtype,
)
from gdmd.rewards.preprocess import CLIP_MEAN, CLIP_STD, ResizeCropNormalize

__all__ = [
    "CLIPScoreConfig",
    "CLIPScorer",
    "PickScoreConfig",
    "build_clip_score",
    "build_pickscore",
    "clip_tokenize",
    "image_transform_from_processor",
    "load_clip_model",
    "load_tokenizer",
]

#: PIL resample codes -> torch interpolation modes (both antialiased, as PIL is).
_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_CLIP_WHAT = (
    "a local directory holding a transformers CLIPModel (config.json and model.safetensors, "
    "as written by CLIPModel.save_pretrained)"
)
_PROCESSOR_WHAT = (
    "a local directory holding the tokenizer files (tokenizer.json or vocab.json and "
    "merges.txt) and preprocessor_config.json"
)


class CLIPScorer(BatchedReward):
    """``scale * cos(image embedding, text embedding)`` of a transformers ``CLIPModel``.

    ``transform`` maps images in ``[0, 1]`` to the model's normalised pixel values;
    ``tokenize`` maps prompts to ``input_ids`` and ``attention_mask``. The text embeddings
    are cached per prompt.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        scale: float,
        *,
        batch_size: int,
    ) -> None:
        device = next(model.parameters()).device
        super().__init__(name, device, batch_size)
        self.model = model.eval().requires_grad_(False)
        self.dtype = next(model.parameters()).dtype
        self.tokenize = tokenize
        self.transform = transform
        self.scale = scale
        self.text_embeddings = PromptCache(self._encode_text)

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        pooled = self.model.text_model(**tokens).pooler_output
        return _normalised(self.model.text_projection(pooled))

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]`` of images in ``[0, 1]`` (with grad)."""
        pixels = self.transform(images.float()).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return _normalised(self.model.visual_projection(pooled))

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image = self.image_embeddings(images).float()
        text = self.text_embeddings(prompts).float()
        return self.scale * (image * text).sum(dim=-1)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def load_clip_model(
    source: str, *, who: str, revision: str | None, dtype: torch.dtype, device: torch.device
) -> Any:
    """``CLIPModel.from_pretrained`` of a hub id or local directory, strictly.

    A checkpoint with missing, unexpected or mis-shaped weights is an error naming them
    (transformers would otherwise initialise missing weights at random and only log it).
    """
    from transformers import CLIPModel

    local = Path(source).expanduser()
    if local.is_file():
        raise RewardLoadError(
            f"{who}: model = {source!r} is a file; it must be a directory holding a "
            "transformers CLIPModel (config.json and its weights) or a hub id"
        )
    if not local.is_dir() and not is_hub_id(source):
        raise RewardLoadError(
            f"{who}: model = {source!r} not found: no such directory, and it is not a hub "
            f"id. {offline_hint(_CLIP_WHAT)}"
        )
    where = str(local.resolve()) if local.is_dir() else source
    try:
        # Mis-shaped weights are collected and reported below, with the missing ones.
        model, info = CLIPModel.from_pretrained(
            where,
            revision=revision,
            dtype=dtype,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as err:
        raise RewardLoadError(
            f"{who}: cannot load the CLIP model {source!r}: {first_line(err)}. "
            f"{offline_hint(_CLIP_WHAT)}"
        ) from err
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]
    problems = [
        f"{len(keys)} {label} key(s): {describe_keys(keys)}"
        for label, keys in (
            ("missing", info.get("missing_keys") or []),
            ("unexpected", info.get("unexpected_keys") or []),
            ("mis-shaped", mismatched),
        )
        if keys
    ]
    if problems:
        raise RewardLoadError(
            f"{who}: the checkpoint {source!r} does not fit a CLIPModel: " + "; ".join(problems)
        )
    return model.to(device)


def load_tokenizer(source: str, *, who: str, key: str, revision: str | None, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained`` of a hub id or local directory, with a clear error."""
    from transformers import AutoTokenizer

    local = Path(source).expanduser()
    if not local.is_dir() and not is_hub_id(source):
        raise RewardLoadError(
            f"{who}: {key} = {source!r} not found: no such directory, and it is not a hub "
            f"id. {offline_hint(_PROCESSOR_WHAT)}"
        )
    where = str(local.resolve()) if local.is_dir() else source
    try:
        return AutoTokenizer.from_pretrained(where, revision=revision, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        raise RewardLoadError(
            f"{who}: cannot load the tokenizer of {key} = {source!r}: {first_line(err)}. "
            f"{offline_hint(_PROCESSOR_WHAT)}"
        ) from err


def _size(value: Any, *, who: str, where: Path, key: str) -> int | tuple[int, int]:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
    raise RewardLoadError(f"{who}: {where}: unsupported {key} {value!r}")


def image_transform_from_processor(
    config_file: Path | None, image_size: int, *, who: str
) -> ResizeCropNormalize:
    """The tensor version of the ``CLIPImageProcessor`` described by ``config_file``.

    Without a ``preprocessor_config.json`` the transform is CLIP's standard one at the
    model's own ``image_size``: shortest side, centre crop, OpenAI mean and std.
    """
    if config_file is None:
        return ResizeCropNormalize(image_size, (image_size, image_size))
    try:
        cfg = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise RewardLoadError(f"{who}: cannot read {config_file}: {first_line(err)}") from err
    resample = cfg.get("resample", 3)
    if resample not in _RESAMPLE:
        raise RewardLoadError(
            f"{who}: {config_file}: resample {resample} is not supported on tensors "
            "(2 = bilinear and 3 = bicubic are)"
        )
    resize: int | tuple[int, int] = image_size
    if cfg.get("do_resize", True):
        resize = _size(cfg.get("size", image_size), who=who, where=config_file, key="size")
    crop: tuple[int, int] | None = None
    if cfg.get("do_center_crop", True):
        crop_value = _size(
            cfg.get("crop_size", image_size), who=who, where=config_file, key="crop_size"
        )
        crop = (crop_value, crop_value) if isinstance(crop_value, int) else crop_value
    normalise = cfg.get("do_normalize", True)
    mean = tuple(cfg.get("image_mean", CLIP_MEAN)) if normalise else (0.0, 0.0, 0.0)
    std = tuple(cfg.get("image_std", CLIP_STD)) if normalise else (1.0, 1.0, 1.0)
    return ResizeCropNormalize(resize, crop, mean, std, _RESAMPLE[resample])


def clip_tokenize(
    tokenizer: Any, max_length: int
) -> Callable[[list[str]], dict[str, torch.Tensor]]:
    """Tokenise to ``max_length`` with truncation, which keeps the end-of-text token last.

    (torchmetrics instead cuts the ids at 77 after tokenising, which drops the end-of-text
    token of long prompts and pools the wrong position.)
    """

    def tokenize(prompts: list[str]) -> dict[str, torch.Tensor]:
        tokens = tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    return tokenize


def _build(
    config: CLIPRewardConfig, ctx: BuildContext, name: str, learned_scale: bool
) -> CLIPScorer:
    who = f"reward {name!r}"
    model = load_clip_model(
        config.model,
        who=who,
        revision=config.revision,
        dtype=torch_dtype(config.dtype),
        device=ctx.device,
    )
    processor = config.processor or config.model
    revision = config.revision if config.processor is None else None
    key = "processor" if config.processor else "model"
    tokenizer = load_tokenizer(processor, who=who, key=key, revision=revision)
    preprocessor = resolve_file(
        processor,
        "preprocessor_config.json",
        who=who,
        key=key,
        revision=revision,
        what=_PROCESSOR_WHAT,
        required=False,
    )
    image_size = int(model.config.vision_config.image_size)
    transform = image_transform_from_processor(preprocessor, image_size, who=who)
    max_length = int(model.config.text_config.max_position_embeddings)
    scale = float(model.logit_scale.detach().float().exp()) if learned_scale else 100.0
    return CLIPScorer(
        name,
        model,
        clip_tokenize(tokenizer, max_length),
        transform,
        scale,
        batch_size=config.batch_size,
    )


def build_clip_score(config: CLIPScoreConfig, ctx: BuildContext) -> CLIPScorer:
    """The ``clip`` reward: ``100 * cos(image, text)``."""
    return _build(config, ctx, "clip", learned_scale=False)


def build_pickscore(config: PickScoreConfig, ctx: BuildContext) -> CLIPScorer:
    """The ``pickscore`` reward: ``logit_scale.exp() * cos(image, text)``."""
    return _build(config, ctx, "pickscore", learned_scale=True)
