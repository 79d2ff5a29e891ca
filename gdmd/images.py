"""Image helpers: tensors to PNG files and labelled sample grids (Pillow only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_pil(image: torch.Tensor, upscale: int = 1) -> Image.Image:
    """``[3, H, W]`` float in ``[0, 1]`` -> RGB PIL image, optionally enlarged (nearest)."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu()
    pil = Image.fromarray(np.ascontiguousarray(array.numpy()), mode="RGB")
    if upscale > 1:
        pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.Resampling.NEAREST)
    return pil


def make_grid(
    images: torch.Tensor,
    captions: Sequence[str] | None = None,
    ncol: int | None = None,
    upscale: int = 1,
    caption_height: int = 12,
    row_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Tile ``[B, 3, H, W]`` images in ``[0, 1]`` into one picture.

    ``captions`` go under each tile, ``row_labels`` to the left of each row.
    """
    b = images.shape[0]
    ncol = ncol or min(b, 8)
    nrow = math.ceil(b / ncol)
    tiles = [to_pil(img, upscale) for img in images]
    w, h = tiles[0].size
    cap = caption_height if captions else 0
    pad = 2
    left = 6 * max((len(label) for label in row_labels), default=0) + 8 if row_labels else 0
    size = (left + ncol * (w + pad) + pad, nrow * (h + cap + pad) + pad)
    grid = Image.new("RGB", size, (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for r, label in enumerate(row_labels or []):
        draw.text((4, pad + r * (h + cap + pad) + h // 2 - 6), label, fill=(255, 255, 255))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncol)
        x, y = left + pad + c * (w + pad), pad + r * (h + cap + pad)
        grid.paste(tile, (x, y))
        if captions:
            text = captions[i]
            # Roughly 6 px per character in Pillow's default font: cut to the tile width.
            limit = max(4, w // 6)
            if len(text) > limit:
                text = text[: limit - 1] + "…"
            draw.text((x + 1, y + h), text, fill=(230, 230, 230))
    return grid


def save_grid(
    images: torch.Tensor,
    path: str | Path,
    captions: Sequence[str] | None = None,
    ncol: int | None = None,
    upscale: int = 1,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Write :func:`make_grid` as a PNG (parent folders created) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, captions, ncol, upscale, row_labels=row_labels).save(path)
    return path
