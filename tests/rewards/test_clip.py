"""The ``clip`` and ``pickscore`` rewards on tiny random-weight CLIP checkpoints saved to disk."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from gdmd.errors import ContractError
from gdmd.interfaces import BuildContext
from gdmd.rewards.clip import build_clip_score, build_pickscore
from gdmd.rewards.clip_config import CLIPScoreConfig, PickScoreConfig
from gdmd.rewards.loading import RewardLoadError
from gdmd.rewards.preprocess import ResizeCropNormalize
from gdmd.testing import assert_reward_contract
from gdmd.testing.tiny_rewards import save_tiny_clip

PROMPTS = ["a red circle", "two blue squares!", "a photo of a cat"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=32, patch_size=8)


@pytest.fixture
def ctx():
    return BuildContext(
        device=torch.device("cpu"), dtype=torch.float32, generator=torch.Generator().manual_seed(0)
    )


def _reference_cosine(directory, images, prompts, transform):
    """What transformers' own CLIPModel API says: normalised features, their dot product."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=transform(images), **tokens)
        scale = float(model.logit_scale.exp())
    img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1), scale


def test_clip_score_is_100_cos_of_the_model(clip_dir, ctx):
    reward = build_clip_score(CLIPScoreConfig(model=str(clip_dir)), ctx)
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    cosine, _ = _reference_cosine(clip_dir, images, PROMPTS, ResizeCropNormalize(32, (32, 32)))
    scores = reward(images, PROMPTS)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.allclose(scores, 100 * cosine, atol=1e-4)


def test_pickscore_uses_the_learned_logit_scale(clip_dir, tmp_path, ctx):
    # A checkpoint whose logit scale is not ln(100), so a hard-coded 100 would show.
    weights = load_file(str(clip_dir / "model.safetensors"))
    weights["logit_scale"] = torch.tensor(3.0)
    pick = tmp_path / "pick"
    save_tiny_clip(pick)
    save_file(weights, str(pick / "model.safetensors"), metadata={"format": "pt"})
    reward = build_pickscore(PickScoreConfig(model=str(pick), processor=str(clip_dir)), ctx)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cosine, scale = _reference_cosine(pick, images, PROMPTS, ResizeCropNormalize(32, (32, 32)))
    assert scale == pytest.approx(torch.tensor(3.0).exp().item(), rel=1e-6)
    assert torch.allclose(reward(images, PROMPTS), scale * cosine, atol=1e-4)


def test_rewards_meet_the_reward_contract(clip_dir, ctx):
    for build, config in (
        (build_clip_score, CLIPScoreConfig(model=str(clip_dir), batch_size=2)),
        (build_pickscore, PickScoreConfig(model=str(clip_dir), processor=str(clip_dir))),
    ):
        reward = build(config, ctx)
        assert reward.differentiable
        assert_reward_contract(reward, image_size=(40, 56), batch_size=3, atol=1e-4)


def test_scoring_batches_do_not_change_scores(clip_dir, ctx):
    one = build_clip_score(CLIPScoreConfig(model=str(clip_dir), batch_size=1), ctx)
    many = build_clip_score(CLIPScoreConfig(model=str(clip_dir), batch_size=16), ctx)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    prompts = [PROMPTS[i % 3] for i in range(5)]
    assert torch.allclose(one(images, prompts), many(images, prompts), atol=1e-4)


def test_gradient_reaches_the_pixels(clip_dir, ctx):
    reward = build_clip_score(CLIPScoreConfig(model=str(clip_dir)), ctx)
    images = torch.rand(2, 3, 64, 48, requires_grad=True)
    reward(images, PROMPTS[:2]).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.model.parameters())


def test_image_size_comes_from_the_processor_config(tmp_path, ctx):
    directory = save_tiny_clip(
        tmp_path / "c48",
        image_size=48,
        patch_size=8,
        preprocessor={"size": {"shortest_edge": 48}, "crop_size": {"height": 48, "width": 48}},
    )
    reward = build_clip_score(CLIPScoreConfig(model=str(directory)), ctx)
    assert reward.transform == ResizeCropNormalize(48, (48, 48))
    assert reward(torch.rand(1, 3, 100, 60), ["x"]).shape == (1,)


def test_without_a_processor_config_the_model_image_size_is_used(tmp_path, ctx):
    directory = save_tiny_clip(tmp_path / "c", image_size=40, patch_size=8)
    (directory / "preprocessor_config.json").unlink()
    reward = build_clip_score(CLIPScoreConfig(model=str(directory)), ctx)
    assert reward.transform == ResizeCropNormalize(40, (40, 40))


def test_bfloat16_weights_score_close_to_float32(clip_dir, ctx):
    full = build_clip_score(CLIPScoreConfig(model=str(clip_dir)), ctx)
    half = build_clip_score(CLIPScoreConfig(model=str(clip_dir), dtype="bfloat16"), ctx)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    low = half(images, PROMPTS[:2])
    assert low.dtype == torch.float32
    assert torch.allclose(low, full(images, PROMPTS[:2]), atol=2.0)


def test_bad_inputs_name_the_reward(clip_dir, ctx):
    reward = build_clip_score(CLIPScoreConfig(model=str(clip_dir)), ctx)
    with pytest.raises(ContractError, match="reward 'clip': 2 images but 1 prompts"):
        reward(torch.rand(2, 3, 32, 32), ["one"])
    with pytest.raises(ContractError, match=r"reward 'clip': expected images \[B, 3, H, W\]"):
        reward(torch.rand(2, 1, 32, 32), ["a", "b"])


def test_missing_and_unexpected_keys_are_named(clip_dir, tmp_path, ctx):
    broken = tmp_path / "broken"
    save_tiny_clip(broken)
    weights = load_file(str(clip_dir / "model.safetensors"))
    del weights["visual_projection.weight"]
    weights["text_model.extra.weight"] = torch.zeros(2)
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RewardLoadError) as err:
        build_clip_score(CLIPScoreConfig(model=str(broken)), ctx)
    message = str(err.value)
    assert "reward 'clip'" in message
    assert "missing key(s): visual_projection.weight" in message
    assert "unexpected key(s): text_model.extra.weight" in message


def test_mis_shaped_weights_are_named(clip_dir, tmp_path, ctx):
    broken = tmp_path / "broken"
    save_tiny_clip(broken)
    weights = load_file(str(clip_dir / "model.safetensors"))
    weights["visual_projection.weight"] = torch.zeros(3, 5)
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RewardLoadError, match="1 mis-shaped key.s.: visual_projection.weight"):
        build_clip_score(CLIPScoreConfig(model=str(broken)), ctx)


def test_a_hub_id_while_offline_says_how_to_use_a_local_copy(ctx, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardLoadError) as err:
        build_clip_score(CLIPScoreConfig(), ctx)
    message = str(err.value)
    assert "openai/clip-vit-large-patch14" in message
    assert "HF_HUB_OFFLINE=1" in message and "local directory" in message


def test_a_path_that_does_not_exist_is_named(ctx, tmp_path):
    with pytest.raises(RewardLoadError, match="not found: no such directory"):
        build_clip_score(CLIPScoreConfig(model=str(tmp_path / "nope" / "x")), ctx)
    file = tmp_path / "weights.safetensors"
    file.write_bytes(b"")
    with pytest.raises(RewardLoadError, match="is a file; it must be a directory"):
        build_clip_score(CLIPScoreConfig(model=str(file)), ctx)


def test_unsupported_resample_is_refused(tmp_path, ctx):
    directory = save_tiny_clip(tmp_path / "c", preprocessor={"resample": 0})
    with pytest.raises(RewardLoadError, match="resample 0 is not supported"):
        build_clip_score(CLIPScoreConfig(model=str(directory)), ctx)


def test_rewards_are_registered_with_their_defaults(gdmd_registries):
    clip = gdmd_registries.get("reward", "clip")
    pick = gdmd_registries.get("reward", "pickscore")
    assert clip.validate_config({}).model == "openai/clip-vit-large-patch14"
    assert pick.validate_config({}).model == "yuvalkirstain/PickScore_v1"
    assert pick.validate_config({}).processor == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
