"""GenEval's models on transformers: Mask2Former finds the objects, CLIP names their colours.

The official evaluator runs mmdet's Mask2Former (Swin-S, COCO instance segmentation) and
open_clip's ViT-L-14 (OpenAI weights). Here:

* :class:`Mask2FormerDetector` runs ``transformers.Mask2FormerForUniversalSegmentation`` on
  image tensors and turns its queries into instances the way mmdet's Mask2Former does
  (its ``MaskFormerFusionHead`` instance path; the idea, in our own code): softmax over the
  classes without "no object"; the ``num_queries`` best (query, class) pairs; each pair's
  mask is its query's mask logits resized to the image and cut at 0; the score is the class
  probability times the mean mask probability inside the mask; the box is the mask's extent.
  transformers' own ``post_process_instance_segmentation`` is not used: it paints the
  instances into one non-overlapping map and gives no boxes.
* :class:`ClipColorClassifier` classifies an object's colour as the official evaluator does:
  the image with everything outside the object's mask set to grey (#999), cropped to its
  box, against a zero-shot classifier over GenEval's ten colours built from three templates
  ("a photo of a {color} {object}", "a photo of a {color}-colored {object}", "a photo of a
  {color} object"; embeddings normalised, averaged, normalised again, as clip_benchmark's
  zero-shot classifier does).
* :class:`GenEvalEvaluator` joins them to :class:`~gdmd_geneval.rules.Rules`.

Imports torch: used by factories and evaluation, not by the plugin module.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from gdmd.rewards.clip import (
    clip_tokenize,
    image_transform_from_processor,
    load_clip_model,
    load_tokenizer,
)
from gdmd.rewards.loading import (
    RewardLoadError,
    describe_keys,
    first_line,
    is_hub_id,
    offline_hint,
    resolve_file,
    torch_dtype,
)
from gdmd_geneval.config import GenEvalConfig
from gdmd_geneval.prompts import GENEVAL_CLASSES
from gdmd_geneval.rules import COLORS, Detection, GenEvalSpecError, PromptSpec, Rules, Verdict

__all__ = [
    "COCO_TO_GENEVAL",
    "ClipColorClassifier",
    "ColorClassifier",
    "Detector",
    "GenEvalEvaluator",
    "InputGeometry",
    "Mask2FormerDetector",
    "build_evaluator",
    "load_mask2former",
]

WHO = "reward 'geneval'"
#: Detector label -> GenEval object name, where they differ (GenEval renames three COCO
#: classes in its object_names.txt).
COCO_TO_GENEVAL = {
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
}
_COLOR_TEMPLATES = (
    "a photo of a {color} {label}",
    "a photo of a {color}-colored {label}",
    "a photo of a {color} object",
)
_DETECTOR_WHAT = (
    "a local directory holding a transformers Mask2FormerForUniversalSegmentation "
    "(config.json, model.safetensors and preprocessor_config.json, as written by "
    "save_pretrained)"
)


class Detector(Protocol):
    """Finds objects: images ``[B, 3, H, W]`` in ``[0, 1]`` -> detections per image."""

    labels: frozenset[str]

    def __call__(self, images: torch.Tensor, min_score: float) -> list[list[Detection]]: ...


class ColorClassifier(Protocol):
    """Names the colour of each detection (of class ``label``) in one image ``[3, H, W]``."""

    def __call__(
        self, image: torch.Tensor, detections: Sequence[Detection], label: str
    ) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class InputGeometry:
    """How images become Mask2Former's input, read from its ``preprocessor_config.json``.

    The size rule is transformers' (``shortest_edge`` / ``longest_edge``, or a fixed
    ``height`` / ``width``); the resized image is then zero-padded at the bottom and right to a
    multiple of ``size_divisor``, as mmdet pads (transformers' own processor stretches it to
    the multiple instead). Pixel values follow the processor's arithmetic: the 8-bit value
    times ``rescale_factor`` (when ``do_rescale``), minus ``image_mean``, over ``image_std``.
    """

    shortest_edge: int | None = 800
    longest_edge: int | None = 1333
    fixed: tuple[int, int] | None = None
    divisor: int = 32
    #: What a pixel in [0, 1] is multiplied by before the mean is subtracted.
    scale: float = 1.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @classmethod
    def from_file(cls, path: Path | None) -> InputGeometry:
        """The geometry a ``preprocessor_config.json`` describes (the defaults without one)."""
        if path is None:
            return cls()
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RewardLoadError(f"{WHO}: cannot read {path}: {first_line(err)}") from err
        size = cfg.get("size", {"shortest_edge": 800, "longest_edge": 1333})
        if isinstance(size, int):
            size = {"shortest_edge": size, "longest_edge": cfg.get("max_size")}
        if not isinstance(size, dict):
            raise RewardLoadError(f"{WHO}: {path}: unsupported size {size!r}")
        if not cfg.get("do_resize", True):
            size = {}
        fixed = None
        if "height" in size and "width" in size:
            fixed = (int(size["height"]), int(size["width"]))
        rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1
        normalise = cfg.get("do_normalize", True)
        return cls(
            shortest_edge=size.get("shortest_edge"),
            longest_edge=size.get("longest_edge") or size.get("max_size"),
            fixed=fixed,
            divisor=int(cfg.get("size_divisor", 32) or 1),
            scale=255.0 * rescale,
            mean=tuple(cfg.get("image_mean", cls.mean)) if normalise else (0.0, 0.0, 0.0),
            std=tuple(cfg.get("image_std", cls.std)) if normalise else (1.0, 1.0, 1.0),
        )

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image is resized to: the shorter side to ``shortest_edge``
        unless that makes the longer side exceed ``longest_edge``, the other side truncated,
        as transformers' ``get_size_with_aspect_ratio`` computes it."""
        if self.fixed is not None:
            return self.fixed
        if self.shortest_edge is None:
            return height, width
        short, long = min(height, width), max(height, width)
        target = float(self.shortest_edge)
        if self.longest_edge is not None and long / short * target > self.longest_edge:
            target = self.longest_edge * short / long
        side = round(target)
        if short == side:
            return height, width
        other = int(target * long / short)
        return (other, side) if width < height else (side, other)

    def pixels(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> padded model input and the resized size."""
        size = self.resized(*images.shape[-2:])
        pixels = images.float()
        if size != tuple(images.shape[-2:]):
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, -1, 1, 1)
        pixels = (pixels * self.scale - mean) / std
        pad_h, pad_w = -size[0] % self.divisor, -size[1] % self.divisor
        return F.pad(pixels, (0, pad_w, 0, pad_h)), size


class Mask2FormerDetector:
    """A transformers Mask2Former as GenEval's object detector (see the module docstring)."""

    def __init__(self, model: Any, geometry: InputGeometry, batch_size: int = 4) -> None:
        self.model = model.eval().requires_grad_(False)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.geometry = geometry
        self.batch_size = batch_size
        id2label = model.config.id2label
        self.class_names = [
            COCO_TO_GENEVAL.get(id2label[i], id2label[i]) for i in range(len(id2label))
        ]
        self.labels = frozenset(self.class_names)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, min_score: float = 0.0) -> list[list[Detection]]:
        """Detections with a score above ``min_score``, per image, most confident first."""
        found: list[list[Detection]] = []
        for start in range(0, images.shape[0], self.batch_size):
            found += self._detect(images[start : start + self.batch_size], min_score)
        return found

    def _detect(self, images: torch.Tensor, min_score: float) -> list[list[Detection]]:
        height, width = images.shape[-2:]
        pixels, valid = self.geometry.pixels(images)
        pixels = pixels.to(self.device, self.dtype)
        outputs = self.model(pixel_values=pixels)
        class_logits = outputs.class_queries_logits.float()  # [B, Q, C + 1]
        mask_logits = outputs.masks_queries_logits.float()  # [B, Q, h, w]
        # As mmdet: to the padded input, cut the padding, then to the image's own size.
        mask_logits = F.interpolate(
            mask_logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False
        )[..., : valid[0], : valid[1]]
        mask_logits = F.interpolate(
            mask_logits, size=(height, width), mode="bilinear", align_corners=False
        )
        queries, classes = class_logits.shape[1], class_logits.shape[2] - 1
        per_image = []
        for b in range(images.shape[0]):
            probs = class_logits[b].softmax(dim=-1)[:, :classes]
            top, index = probs.flatten().topk(queries)
            query, label = index // classes, index % classes
            logits = mask_logits[b, query]
            masks = logits > 0
            inside = masks.flatten(1).float()
            mask_score = (logits.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
            scores = top * mask_score
            detections = []
            for k in torch.argsort(scores, descending=True, stable=True).tolist():
                score = float(scores[k])
                if score <= min_score or not bool(masks[k].any()):
                    continue
                rows = masks[k].any(dim=1).nonzero().flatten()
                cols = masks[k].any(dim=0).nonzero().flatten()
                box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
                name = self.class_names[int(label[k])]
                detections.append(Detection(name, score, box, masks[k].cpu()))
            per_image.append(detections)
        return per_image


class ClipColorClassifier:
    """GenEval's zero-shot colour classifier on a transformers ``CLIPModel``."""

    def __init__(
        self,
        model: Any,
        tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        background: float = 0.6,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.tokenize = tokenize
        self.transform = transform
        self.background = background
        self.classifiers: dict[str, torch.Tensor] = {}

    def _classifier(self, label: str) -> torch.Tensor:
        """``[10, D]``: per colour, the normalised mean of its normalised template embeddings."""
        if label not in self.classifiers:
            texts = [t.format(color=c, label=label) for c in COLORS for t in _COLOR_TEMPLATES]
            tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
            pooled = self.model.text_model(**tokens).pooler_output
            embedded = _normalised(self.model.text_projection(pooled).float())
            mean = embedded.view(len(COLORS), len(_COLOR_TEMPLATES), -1).mean(dim=1)
            self.classifiers[label] = _normalised(mean)
        return self.classifiers[label]

    def crop(self, image: torch.Tensor, detection: Detection) -> torch.Tensor:
        """``[1, 3, h, w]``: the object on grey, cropped to its box (rounded as PIL does)."""
        if detection.mask is not None:
            mask = detection.mask.to(image.device).bool()
            image = torch.where(mask, image, torch.full_like(image, self.background))
        height, width = image.shape[-2:]
        x0, y0, x1, y1 = (round(float(v)) for v in detection.box)
        x0, x1 = min(max(x0, 0), width - 1), min(max(x1, x0 + 1), width)
        y0, y1 = min(max(y0, 0), height - 1), min(max(y1, y0 + 1), height)
        return image[None, :, y0:y1, x0:x1]

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, detections: Sequence[Detection], label: str
    ) -> list[str]:
        if not detections:
            return []
        pixels = torch.cat(
            [self.transform(self.crop(image.float(), d)) for d in detections]
        ).to(self.device, self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        embedded = _normalised(self.model.visual_projection(pooled).float())
        choice = (embedded @ self._classifier(label).T).argmax(dim=-1)
        return [COLORS[i] for i in choice.tolist()]


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class GenEvalEvaluator:
    """Detector + colour classifier + rules: one :class:`Verdict` per image."""

    def __init__(self, detector: Detector, colors: ColorClassifier, rules: Rules) -> None:
        self.detector = detector
        self.colors = colors
        self.rules = rules

    def check_labels(self, spec: PromptSpec) -> None:
        """Refuse a prompt naming an object the detector cannot find (it would always fail)."""
        unknown = sorted(spec.labels() - self.detector.labels)
        if unknown:
            raise GenEvalSpecError(
                f"the GenEval prompt {spec.prompt!r} names {', '.join(map(repr, unknown))}, "
                f"which the detector does not know (its labels: "
                f"{describe_keys(self.detector.labels)})"
            )

    def judge(self, images: torch.Tensor, specs: Sequence[PromptSpec]) -> list[Verdict]:
        """The verdict on each image ``[B, 3, H, W]`` in ``[0, 1]`` for its prompt's clauses."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(specs):
            raise ValueError(
                f"expected images [B, 3, H, W] and B specs, got {list(images.shape)} and "
                f"{len(specs)}"
            )
        for spec in specs:
            self.check_labels(spec)
        lowest = min(self.rules.score_threshold(spec.tag) for spec in specs) if specs else 0.0
        found = self.detector(images, lowest)
        verdicts = []
        for image, spec, detections in zip(images, specs, found, strict=True):
            kept = self.rules.select(detections, spec.tag)
            colored: dict[int, Detection] = {}
            needed = self.rules.needs_color(spec, kept)
            for label in dict.fromkeys(d.label for d in needed):
                group = [d for d in needed if d.label == label]
                for detection, color in zip(group, self.colors(image, group, label), strict=True):
                    colored[id(detection)] = dataclasses.replace(detection, color=color)
            kept = {
                label: [colored.get(id(d), d) for d in objects] for label, objects in kept.items()
            }
            verdicts.append(self.rules.judge(spec, kept))
        return verdicts


def load_mask2former(
    source: str, *, dtype: torch.dtype, device: torch.device
) -> tuple[Any, Path | None]:
    """``Mask2FormerForUniversalSegmentation.from_pretrained`` of a hub id or local directory,
    strictly (missing or mis-shaped weights are an error naming them), and the path of its
    ``preprocessor_config.json`` (``None`` when it has none)."""
    from transformers import Mask2FormerForUniversalSegmentation

    local = Path(source).expanduser()
    if local.is_file() or (not local.is_dir() and not is_hub_id(source)):
        raise RewardLoadError(
            f"{WHO}: detector = {source!r} is not a directory holding a Mask2Former, nor a hub "
            f"id. {offline_hint(_DETECTOR_WHAT)}"
        )
    where = str(local.resolve()) if local.is_dir() else source
    try:
        loaded: Any = Mask2FormerForUniversalSegmentation.from_pretrained(
            where, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
        model, info = loaded
    except (OSError, ValueError) as err:
        raise RewardLoadError(
            f"{WHO}: cannot load the Mask2Former {source!r}: {first_line(err)}. "
            f"{offline_hint(_DETECTOR_WHAT)}"
        ) from err
    except ImportError as err:
        raise RewardLoadError(
            f"{WHO}: transformers' Mask2Former needs scipy: pip install scipy "
            f"({first_line(err)})"
        ) from err
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]
    problems = [
        f"{len(keys)} {what} key(s): {describe_keys(keys)}"
        for what, keys in (("missing", info.get("missing_keys") or []), ("mis-shaped", mismatched))
        if keys
    ]
    if problems:
        raise RewardLoadError(
            f"{WHO}: the checkpoint {source!r} does not fit a Mask2Former: " + "; ".join(problems)
        )
    preprocessor = resolve_file(
        source,
        "preprocessor_config.json",
        who=WHO,
        key="detector",
        what=_DETECTOR_WHAT,
        required=False,
    )
    return model.to(device), preprocessor


def build_evaluator(config: GenEvalConfig, device: torch.device | str = "cpu") -> GenEvalEvaluator:
    """The detector, colour classifier and rules that ``config`` describes, on ``device``."""
    device = torch.device(device)
    dtype = torch_dtype(config.dtype)
    model, preprocessor = load_mask2former(config.detector, dtype=dtype, device=device)
    detector = Mask2FormerDetector(model, InputGeometry.from_file(preprocessor), config.batch_size)
    missing = sorted(set(GENEVAL_CLASSES) - detector.labels)
    if missing:
        raise RewardLoadError(
            f"{WHO}: the detector {config.detector!r} lacks {len(missing)} of GenEval's object "
            f"classes ({describe_keys(missing)}); GenEval needs a COCO instance-segmentation "
            "model"
        )
    who = WHO
    clip = load_clip_model(config.clip_model, who=who, revision=None, dtype=dtype, device=device)
    tokenizer = load_tokenizer(config.clip_model, who=who, key="clip_model", revision=None)
    clip_preprocessor = resolve_file(
        config.clip_model,
        "preprocessor_config.json",
        who=who,
        key="clip_model",
        what="a local directory holding a transformers CLIPModel, its tokenizer and "
        "preprocessor_config.json",
        required=False,
    )
    transform = image_transform_from_processor(
        clip_preprocessor, int(clip.config.vision_config.image_size), who=who
    )
    max_length = int(clip.config.text_config.max_position_embeddings)
    colors = ClipColorClassifier(
        clip, clip_tokenize(tokenizer, max_length), transform, config.background
    )
    rules = Rules(
        threshold=config.threshold,
        counting_threshold=config.counting_threshold,
        max_objects=config.max_objects,
        position_margin=config.position_margin,
    )
    return GenEvalEvaluator(detector, colors, rules)

