"""The tensor preprocessing of the reward models against PIL and against hand-computed geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from gdmd.rewards.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    ResizeCropNormalize,
    ResizeLongestPadNormalize,
    center_crop,
    resize,
    resize_longest_and_pad,
    shortest_edge_size,
)


def _uint8_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blurred noise on a gradient: photo-like, with detail at every scale.

    (On white noise PIL's separate horizontal pass clips its overshoot to uint8 before the
    vertical pass, which alone moves pixels by up to 6/255; photos barely overshoot.)
    """
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = rng.integers(0, 256, (height, width, 3))
    mixed = np.clip(0.6 * ramp + 0.4 * noise, 0, 255).astype(np.uint8)
    return np.array(Image.fromarray(mixed).filter(ImageFilter.GaussianBlur(2)))


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize(
    ("height", "width", "size"), [(64, 48, (40, 30)), (30, 20, (45, 30)), (96, 96, (224, 224))]
)
def test_bicubic_resize_matches_pil_within_its_rounding(height, width, size):
    array = _uint8_image(height, width)
    pil = Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    expected = _tensor(np.asarray(pil))
    ours = resize(_tensor(array), size)
    # PIL rounds to uint8 and clamps overshoot; the float path does neither.
    difference = (ours.clamp(0, 1) - expected).abs()
    assert difference.max() <= 1.5 / 255
    assert difference.mean() < 0.4 / 255


def test_resize_to_the_same_size_is_the_identity():
    images = torch.rand(2, 3, 17, 23)
    assert resize(images, (17, 23)) is images


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (480, 640, (224, 298)),
        (640, 480, (298, 224)),
        (224, 224, (224, 224)),
        (300, 301, (224, 224)),
    ],
)
def test_shortest_edge_size_truncates_the_long_side(height, width, expected):
    assert shortest_edge_size(height, width, 224) == expected


def test_center_crop_takes_the_floor_offset():
    images = torch.arange(7 * 8, dtype=torch.float32).view(1, 1, 7, 8).expand(1, 3, 7, 8)
    crop = center_crop(images, (4, 5))
    # (7 - 4) // 2 = 1 rows and (8 - 5) // 2 = 1 column cut from the top-left.
    assert crop.shape == (1, 3, 4, 5)
    assert crop[0, 0, 0, 0] == 1 * 8 + 1


def test_center_crop_can_round_its_offsets_as_torchvision_does():
    images = torch.arange(9 * 4, dtype=torch.float32).view(1, 1, 9, 4)
    # (9 - 6) / 2 = 1.5: transformers starts at row 1, torchvision at round(1.5) = 2.
    assert center_crop(images, (6, 4))[0, 0, 0, 0] == 1 * 4
    assert center_crop(images, (6, 4), "round")[0, 0, 0, 0] == 2 * 4


def test_resize_longest_and_pad_geometry():
    images = torch.ones(1, 3, 40, 24)
    out = resize_longest_and_pad(images, 32)
    # scale 0.8: (32, round(19.2) = 19), then 13 columns of zeros: 6 left, 7 right.
    assert out.shape == (1, 3, 32, 32)
    assert torch.all(out[..., :6] == 0) and torch.all(out[..., -7:] == 0)
    assert torch.allclose(out[..., 6:25], torch.ones(1, 3, 32, 19), atol=1e-5)


def test_clip_transform_output_size_and_normalisation():
    transform = ResizeCropNormalize(32, (32, 32))
    out = transform(torch.full((2, 3, 48, 64), 0.5))
    assert out.shape == (2, 3, 32, 32)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0, :, 5, 5], expected, atol=1e-5)


def test_hps_transform_pads_with_black_before_normalising():
    out = ResizeLongestPadNormalize(32)(torch.full((1, 3, 32, 16), 0.5))
    black = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0, :, 0, 0], black, atol=1e-5)


def test_preprocessing_is_differentiable():
    images = torch.rand(2, 3, 40, 30, requires_grad=True)
    crop = ResizeCropNormalize(24, (24, 24))(images)
    pad = ResizeLongestPadNormalize(24)(images)
    (crop.sum() + pad.sum()).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
