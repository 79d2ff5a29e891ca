"""Image preprocessing of the official reward scorers, done on tensors so gradients flow.

The official scorers resize PIL images (CLIP's and PickScore's ``CLIPImageProcessor``,
ImageReward's torchvision-on-PIL transform) or float tensors (HPSv2's ``ResizeMaxSize``).
PyTorch's antialiased bicubic interpolation uses PIL's cubic kernel (a = -0.5), so the same
geometry on float tensors reproduces the PIL paths up to their uint8 rounding and clamping;
HPSv2's tensor path it reproduces exactly (with torchvision >= 0.17, whose tensor resize
antialiases by default). ``docs/parity.md`` gives the measured differences.

Every function takes and returns float ``[B, 3, H, W]`` and is differentiable. Nothing is
clamped: the images handed to rewards are already in ``[0, 1]``, and a clamp would zero the
gradient of overshooting pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Mean and standard deviation of OpenAI's CLIP training images, used by CLIP, PickScore,
#: HPSv2 and ImageReward alike.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize to ``size`` (height, width) with antialiasing, as PIL does; identity if equal."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=True)


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """The (height, width) that gives the shorter side ``shortest_edge`` pixels.

    The longer side is truncated, as ``transformers.image_transforms.get_resize_output_image_size``
    does for ``CLIPImageProcessor``.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def center_crop(
    images: torch.Tensor, size: tuple[int, int], offsets: str = "floor"
) -> torch.Tensor:
    """Crop the centre ``size`` (height, width).

    ``offsets="floor"`` starts at ``(H - h) // 2`` as transformers' ``CLIPImageProcessor``
    does; ``"round"`` at ``round((H - h) / 2)`` as torchvision's ``CenterCrop`` does (they
    differ by a pixel when ``H - h`` is odd). An image smaller than ``size`` in some dimension
    is zero-padded there first, around the centre, so the output always has the requested size.
    """
    height, width = images.shape[-2:]
    crop_h, crop_w = size
    if height < crop_h or width < crop_w:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = images.shape[-2:]
    if offsets == "round":
        top, left = round((height - crop_h) / 2), round((width - crop_w) / 2)
    else:
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[..., top : top + crop_h, left : left + crop_w]


def resize_longest_and_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """HPSv2's ``ResizeMaxSize``: the longer side to ``size``, then zero padding to a square.

    Scale ``s = size / max(H, W)``, new size ``(round(H s), round(W s))`` with Python's
    rounding, padding split as ``left = pad_w // 2``, ``top = pad_h // 2`` (the padding is
    black because it happens before normalisation).
    """
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    images = resize(images, (new_h, new_w))
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return images


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


@dataclass(frozen=True)
class ResizeCropNormalize:
    """``CLIPImageProcessor``'s geometry on tensors: resize, centre crop, normalise.

    ``resize`` is the shortest side (an int, the usual CLIP setting) or an exact
    ``(height, width)``; ``crop_size`` ``None`` skips the crop. Used by CLIP, PickScore and
    ImageReward (whose torchvision ``Resize(224)`` + ``CenterCrop(224)`` is the same geometry
    with ``crop_offsets="round"``). ``mode`` is the interpolation (``"bicubic"`` for PIL's
    resample 3, ``"bilinear"`` for 2).
    """

    resize: int | tuple[int, int]
    crop_size: tuple[int, int] | None
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    mode: str = "bicubic"
    crop_offsets: str = "floor"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if isinstance(self.resize, int):
            size = shortest_edge_size(height, width, self.resize)
        else:
            size = self.resize
        images = resize(images, size, self.mode)
        if self.crop_size is not None:
            images = center_crop(images, self.crop_size, self.crop_offsets)
        return normalize(images, self.mean, self.std)


@dataclass(frozen=True)
class ResizeLongestPadNormalize:
    """HPSv2's evaluation transform on tensors: longest side, zero pad, normalise."""

    size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(resize_longest_and_pad(images, self.size), self.mean, self.std)
