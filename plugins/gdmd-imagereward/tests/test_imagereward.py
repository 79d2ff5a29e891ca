"""The ``imagereward`` reward on tiny random-weight checkpoints in the official format.

The reference below is BLIP's ViT (``vit.py``) and its cross-attending BERT (``med.py``) with
ImageReward's MLP, written out in plain torch with the official module names, so its
``state_dict()`` has exactly the keys of the official ``ImageReward.pt``. The reward loads that
file into transformers' BLIP modules and must score what the reference computes.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gdmd.errors import ContractError
from gdmd.interfaces import BuildContext
from gdmd.manager import build_plugin_manager
from gdmd.rewards.loading import RewardLoadError
from gdmd.rewards.preprocess import ResizeCropNormalize
from gdmd.testing import assert_reward_contract
from gdmd.testing.tiny_rewards import save_tiny_bert_tokenizer
from gdmd_imagereward.config import ImageRewardConfig
from gdmd_imagereward.model import SCORE_MEAN, SCORE_STD, build_imagereward

V_WIDTH, V_HEADS, V_LAYERS, IMAGE, PATCH = 32, 4, 2, 32, 8
T_WIDTH, T_HEADS, T_LAYERS, POSITIONS = 24, 4, 2, 40
PROMPTS = ["a photo of a cat", "a dog, a cat!", "cat"]


def _attention(q, k, v, heads, additive_mask=None):
    b, n, c = q.shape
    split = lambda x: x.view(b, x.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / (c // heads) ** 0.5
    if additive_mask is not None:
        scores = scores + additive_mask
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, c)


class _VitAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(V_WIDTH, 3 * V_WIDTH)
        self.proj = nn.Linear(V_WIDTH, V_WIDTH)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(_attention(q, k, v, V_HEADS))


class _VitBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(V_WIDTH, eps=1e-6)
        self.attn = _VitAttention()
        self.norm2 = nn.LayerNorm(V_WIDTH, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(V_WIDTH, 4 * V_WIDTH)
        self.mlp.fc2 = nn.Linear(4 * V_WIDTH, V_WIDTH)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class _Vit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, V_WIDTH, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, V_WIDTH) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, (IMAGE // PATCH) ** 2 + 1, V_WIDTH) * 0.5)
        self.blocks = nn.ModuleList(_VitBlock() for _ in range(V_LAYERS))
        self.norm = nn.LayerNorm(V_WIDTH, eps=1e-6)

    def forward(self, pixels):
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], 1, V_WIDTH), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # every token, as BLIP's ViT


class _BertSelf(nn.Module):
    def __init__(self, kv_width: int) -> None:
        super().__init__()
        self.query = nn.Linear(T_WIDTH, T_WIDTH)
        self.key = nn.Linear(kv_width, T_WIDTH)
        self.value = nn.Linear(kv_width, T_WIDTH)


class _BertAttention(nn.Module):
    def __init__(self, kv_width: int) -> None:
        super().__init__()
        self.self = _BertSelf(kv_width)
        self.output = nn.Module()
        self.output.dense = nn.Linear(T_WIDTH, T_WIDTH)
        self.output.LayerNorm = nn.LayerNorm(T_WIDTH, eps=1e-12)

    def forward(self, x, context, mask=None):
        attended = _attention(
            self.self.query(x), self.self.key(context), self.self.value(context), T_HEADS, mask
        )
        return self.output.LayerNorm(x + self.output.dense(attended))


class _BertLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _BertAttention(T_WIDTH)
        self.crossattention = _BertAttention(V_WIDTH)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(T_WIDTH, 2 * T_WIDTH)
        self.output = nn.Module()
        self.output.dense = nn.Linear(2 * T_WIDTH, T_WIDTH)
        self.output.LayerNorm = nn.LayerNorm(T_WIDTH, eps=1e-12)

    def forward(self, x, image, mask):
        x = self.attention(x, x, mask)
        x = self.crossattention(x, image)
        h = nn.functional.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.output.dense(h))


class _Med(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, T_WIDTH)
        self.embeddings.position_embeddings = nn.Embedding(POSITIONS, T_WIDTH)
        self.embeddings.LayerNorm = nn.LayerNorm(T_WIDTH, eps=1e-12)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_BertLayer() for _ in range(T_LAYERS))

    def forward(self, ids, attention_mask, image):
        e = self.embeddings
        x = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings.weight[: ids.shape[1]])
        additive = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, image, additive)
        return x


class OfficialStyleImageReward(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.blip = nn.Module()
        self.blip.visual_encoder = _Vit()
        self.blip.text_encoder = _Med(vocab)
        self.blip.vision_proj = nn.Linear(V_WIDTH, 8)
        self.blip.text_proj = nn.Linear(T_WIDTH, 8)
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(
            nn.Linear(T_WIDTH, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def score(self, pixels, ids, mask):
        image = self.blip.visual_encoder(pixels)
        cls = self.blip.text_encoder(ids, mask, image)[:, 0]
        return (self.mlp.layers(cls).squeeze(-1) - SCORE_MEAN) / SCORE_STD


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagereward")
    tokenizer_dir = save_tiny_bert_tokenizer(root / "tokenizer")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    reference = OfficialStyleImageReward(len(tokenizer)).eval()
    with torch.no_grad():  # LayerNorms and the head away from defaults, so mapping errors show
        for module in reference.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
        for layer in reference.mlp.layers:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(4.0)
    state = dict(reference.state_dict())
    # The official text encoder keeps its position ids as a persistent buffer.
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(POSITIONS)[None]
    torch.save(state, root / "ImageReward.pt")
    med = {
        "hidden_size": T_WIDTH,
        "num_attention_heads": T_HEADS,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "add_cross_attention": True,
    }
    (root / "med_config.json").write_text(json.dumps(med))
    return root, reference, tokenizer


@pytest.fixture
def ctx():
    return BuildContext(
        device=torch.device("cpu"), dtype=torch.float32, generator=torch.Generator().manual_seed(0)
    )


def _reward(files, ctx, **keys):
    keys.setdefault("model", str(files[0]))
    keys.setdefault("tokenizer", str(files[0] / "tokenizer"))
    return build_imagereward(ImageRewardConfig(vision_heads=V_HEADS, **keys), ctx)


@pytest.mark.parametrize("size", [(32, 32), (48, 40), (20, 37)])
def test_scores_equal_the_official_style_reference(files, ctx, size):
    _, reference, tokenizer = files
    reward = _reward(files, ctx)
    images = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(1))
    tokens = tokenizer(
        PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    pixels = ResizeCropNormalize(IMAGE, (IMAGE, IMAGE), crop_offsets="round")(images)
    with torch.no_grad():
        expected = reference.score(pixels, tokens["input_ids"], tokens["attention_mask"])
    assert torch.allclose(reward(images, PROMPTS), expected, atol=1e-4)
    assert expected.std() > 1e-2  # different inputs score differently: the check has teeth


def test_the_checkpoint_file_itself_finds_med_config_beside_it(files, ctx):
    images = torch.rand(2, 3, 32, 32)
    by_file = _reward(files, ctx, model=str(files[0] / "ImageReward.pt"))
    assert torch.allclose(by_file(images, PROMPTS[:2]), _reward(files, ctx)(images, PROMPTS[:2]))


def test_without_med_config_the_published_text_settings_apply(files, ctx, tmp_path):
    (tmp_path / "ImageReward.pt").symlink_to(files[0] / "ImageReward.pt")
    # Without the file the text encoder takes ImageReward's published 12 heads (not the 4
    # this tiny checkpoint was made with; 12 still divides its width of 24).
    reward = _reward(files, ctx, model=str(tmp_path))
    assert reward.network.text.config.num_attention_heads == 12
    assert reward.network.text.config.layer_norm_eps == 1e-12


def test_meets_the_reward_contract(files, ctx):
    reward = _reward(files, ctx, batch_size=2)
    assert reward.differentiable
    assert_reward_contract(reward, image_size=(40, 36), batch_size=3, atol=1e-4)


def test_gradient_reaches_the_pixels(files, ctx):
    reward = _reward(files, ctx)
    images = torch.rand(2, 3, 40, 40, requires_grad=True)
    reward(images, PROMPTS[:2]).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


def test_blip_tokens_are_added_to_a_plain_bert_tokenizer(files, ctx, tmp_path):
    from transformers import BertTokenizer

    plain = tmp_path / "plain"
    plain.mkdir()
    vocab = (files[0] / "tokenizer" / "vocab.txt").read_text()
    (plain / "vocab.txt").write_text(vocab)
    BertTokenizer(str(plain / "vocab.txt")).save_pretrained(plain)
    reward = _reward(files, ctx, tokenizer=str(plain))
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [
        len(vocab.splitlines()),
        len(vocab.splitlines()) + 1,
    ]
    ids = reward.tokenize(["a cat"])["input_ids"][0]
    assert ids.shape == (35,) and ids[0] == reward.tokenizer.cls_token_id


def test_missing_and_unexpected_keys_are_named(files, ctx, tmp_path):
    state = torch.load(files[0] / "ImageReward.pt", weights_only=True)
    del state["blip.visual_encoder.blocks.1.attn.qkv.bias"]
    del state["mlp.layers.7.weight"]
    state["blip.itm_head.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "ImageReward.pt")
    with pytest.raises(RewardLoadError) as err:
        _reward(files, ctx, model=str(tmp_path), med_config=str(files[0] / "med_config.json"))
    message = str(err.value)
    assert "reward 'imagereward'" in message
    assert (
        "2 missing key(s): blip.visual_encoder.blocks.1.attn.qkv.bias, mlp.layers.7.weight"
        in message
    )
    assert "1 unexpected key(s): blip.itm_head.weight" in message


def test_a_wrong_shape_is_named(files, ctx, tmp_path):
    state = torch.load(files[0] / "ImageReward.pt", weights_only=True)
    state["mlp.layers.2.weight"] = torch.zeros(128, 999)
    torch.save(state, tmp_path / "ImageReward.pt")
    with pytest.raises(RewardLoadError, match="does not fit: .*mlp.layers.2.weight"):
        _reward(files, ctx, model=str(tmp_path), med_config=str(files[0] / "med_config.json"))


def test_the_hub_checkpoint_while_offline_says_how_to_use_a_local_copy(files, ctx, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardLoadError) as err:
        build_imagereward(ImageRewardConfig(tokenizer=str(files[0] / "tokenizer")), ctx)
    message = str(err.value)
    assert "ImageReward.pt" in message and "'THUDM/ImageReward'" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_bad_inputs_name_the_reward(files, ctx):
    with pytest.raises(ContractError, match="reward 'imagereward': 2 images but 1 prompts"):
        _reward(files, ctx)(torch.rand(2, 3, 32, 32), ["a"])


def test_listed_by_the_plugin_manager_from_its_distribution():
    spec = build_plugin_manager().registries.get("reward", "imagereward")
    assert (spec.plugin, spec.distribution) == ("imagereward", "gdmd-imagereward")
    assert spec.validate_config({}).tokenizer == "bert-base-uncased"
