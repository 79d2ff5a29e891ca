"""The ``aesthetic`` reward on a tiny random CLIP and a random head in the official format."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from gdmd.interfaces import BuildContext
from gdmd.rewards.aesthetic import AestheticHead, build_aesthetic
from gdmd.rewards.aesthetic_config import AESTHETIC_HEAD_FILE, AestheticConfig
from gdmd.rewards.loading import RewardLoadError
from gdmd.rewards.preprocess import ResizeCropNormalize
from gdmd.testing import assert_reward_contract
from gdmd.testing.tiny_rewards import save_tiny_clip

#: The published checkpoint's keys: the Linear layers of the nn.Sequential `layers`.
OFFICIAL_KEYS = sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
EMBED = 16


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(
        tmp_path_factory.mktemp("clip"), image_size=32, patch_size=8, projection_dim=EMBED
    )


def _random_head_state(seed=0, input_size=EMBED):
    """Weights drawn with variance 1/fan_in (PyTorch's init makes a ~0 output), biases too."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [input_size, 1024, 128, 64, 16, 1]
    state = {}
    layers = zip(sizes[:-1], sizes[1:], strict=True)
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), layers, strict=True):
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) / (
            fan_in**0.5
        )
        state[f"layers.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
    return state


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    """A head saved as the official script saves it: torch.save of the module's state_dict."""
    path = tmp_path_factory.mktemp("head") / AESTHETIC_HEAD_FILE
    torch.save(_random_head_state(), path)
    return path


@pytest.fixture
def ctx():
    return BuildContext(
        device=torch.device("cpu"), dtype=torch.float32, generator=torch.Generator().manual_seed(0)
    )


def _reference(clip_dir, head_state, pixels):
    """transformers' own image_embeds, normalised, through the head written as matmuls."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        tokens = torch.zeros(pixels.shape[0], 3, dtype=torch.long)
        embeds = model(pixel_values=pixels, input_ids=tokens).image_embeds
    x = embeds / embeds.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):  # no activations: the published head is affine
        x = x @ head_state[f"layers.{index}.weight"].T + head_state[f"layers.{index}.bias"]
    return x.squeeze(-1)


def test_the_official_module_has_the_official_keys():
    assert sorted(AestheticHead(768).state_dict()) == OFFICIAL_KEYS
    assert AestheticHead(768).layers[0].weight.shape == (1024, 768)


def test_score_is_the_head_on_the_normalised_embedding(clip_dir, head_file, ctx):
    reward = build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(head_file)), ctx)
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    transform = ResizeCropNormalize(32, (32, 32), crop_offsets="round")
    expected = _reference(clip_dir, _random_head_state(), transform(images))
    scores = reward(images, ["a", "b", "c"])
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.allclose(scores, expected, atol=1e-5)
    assert scores.std() > 1e-3  # the images are told apart, so the comparison means something


def test_openai_clip_crop_offsets_are_used(clip_dir, head_file, ctx):
    reward = build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(head_file)), ctx)
    assert reward.embedder.transform == ResizeCropNormalize(32, (32, 32), crop_offsets="round")


def test_reward_contract_and_gradient(clip_dir, head_file, ctx):
    reward = build_aesthetic(
        AestheticConfig(model=str(clip_dir), head=str(head_file), batch_size=2), ctx
    )
    assert reward.differentiable
    assert_reward_contract(reward, image_size=(40, 56), batch_size=3, atol=1e-5)
    images = torch.rand(2, 3, 64, 48, requires_grad=True)
    reward(images, ["x", "y"]).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.embedder.model.parameters())
    assert all(p.grad is None for p in reward.head.parameters())


def test_safetensors_head_and_head_directory(clip_dir, head_file, tmp_path, ctx):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    from_pth = build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(head_file)), ctx)
    safetensors = tmp_path / "head.safetensors"
    save_file(_random_head_state(), str(safetensors))
    from_st = build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(safetensors)), ctx)
    from_dir = build_aesthetic(
        AestheticConfig(model=str(clip_dir), head=str(head_file.parent)), ctx
    )
    expected = from_pth(images, ["a", "b"])
    assert torch.equal(from_st(images, ["a", "b"]), expected)
    assert torch.equal(from_dir(images, ["a", "b"]), expected)


def test_missing_and_unexpected_head_keys_are_named(clip_dir, tmp_path, ctx):
    state = _random_head_state()
    del state["layers.7.bias"]
    state["layers.8.weight"] = torch.zeros(1, 1)
    path = tmp_path / AESTHETIC_HEAD_FILE
    torch.save(state, path)
    with pytest.raises(RewardLoadError) as err:
        build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(path)), ctx)
    message = str(err.value)
    assert message.startswith(f"reward 'aesthetic': the checkpoint {path} does not fit")
    assert '"layers.7.bias"' in message and '"layers.8.weight"' in message


def test_a_head_for_another_clip_width_is_refused(clip_dir, tmp_path, ctx):
    path = tmp_path / AESTHETIC_HEAD_FILE
    torch.save(_random_head_state(input_size=768), path)
    with pytest.raises(RewardLoadError, match=r"size mismatch for layers\.0\.weight"):
        build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(path)), ctx)


def test_missing_head_says_where_to_get_it(clip_dir, tmp_path, ctx, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardLoadError, match=re.escape(f"without {AESTHETIC_HEAD_FILE}")):
        build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(tmp_path)), ctx)
    with pytest.raises(RewardLoadError) as err:
        build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(tmp_path / "x.pth")), ctx)
    assert "head = " in str(err.value)
    assert "improved-aesthetic-predictor" in str(err.value)


def test_a_pickled_object_is_refused(clip_dir, tmp_path, ctx):
    path = tmp_path / AESTHETIC_HEAD_FILE
    torch.save({"layers": AestheticHead(EMBED)}, path)  # a module, not a state dict
    with pytest.raises(RewardLoadError, match="cannot read the checkpoint"):
        build_aesthetic(AestheticConfig(model=str(clip_dir), head=str(path)), ctx)


def test_registered_with_the_openai_clip_default(gdmd_registries):
    component = gdmd_registries.get("reward", "aesthetic")
    config = component.validate_config({"head": "/data/aesthetic"})
    assert config.model == "openai/clip-vit-large-patch14"
    assert config.dtype == "float32" and config.batch_size == 16
