"""The ``hpsv2`` reward on tiny random-weight checkpoints in the official (open_clip) format.

The reference below is open_clip's CLIP architecture written out in plain torch with
open_clip's module names, so its ``state_dict()`` has exactly the keys of the official
``HPS_v2*_compressed.pt`` files. The reward loads that file into transformers' CLIP and must
score what the reference computes.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from gdmd.errors import ContractError
from gdmd.interfaces import BuildContext
from gdmd.manager import build_plugin_manager
from gdmd.rewards.loading import RewardLoadError
from gdmd.rewards.preprocess import ResizeLongestPadNormalize
from gdmd.testing import assert_reward_contract
from gdmd.testing.tiny_rewards import byte_level_clip_tokenizer
from gdmd_hpsv2.config import HPSv2Config
from gdmd_hpsv2.model import build_hpsv2

WIDTH, HEADS, LAYERS, EMBED, IMAGE, PATCH, CONTEXT = 32, 4, 2, 16, 32, 8, 77
PROMPTS = ["a red circle", "wow! two cats!!", "a photo of a dog"]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(WIDTH, 4 * WIDTH), gelu=nn.GELU(), c_proj=nn.Linear(4 * WIDTH, WIDTH)
            )
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_Block() for _ in range(LAYERS))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class _Visual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        grid = IMAGE // PATCH
        self.conv1 = nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(WIDTH) * 0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, WIDTH) * 0.5)
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = _Transformer()
        self.ln_post = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(torch.randn(WIDTH, EMBED) * WIDTH**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, WIDTH)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        return self.ln_post(self.transformer(x)[:, 0]) @ self.proj


class OpenClipStyleCLIP(nn.Module):
    """open_clip's ``CLIP`` (pre-norm blocks, exact GELU, argmax pooling, causal text)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.visual = _Visual()
        self.token_embedding = nn.Embedding(vocab_size, WIDTH)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, WIDTH) * 0.1)
        self.transformer = _Transformer()
        self.ln_final = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Parameter(torch.randn(WIDTH, EMBED) * WIDTH**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        causal = torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)
        x = self.transformer(self.token_embedding(ids) + self.positional_embedding, causal)
        x = self.ln_final(x)
        return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection

    def score(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        image = nn.functional.normalize(self.visual(pixels), dim=-1)
        text = nn.functional.normalize(self.encode_text(ids), dim=-1)
        return (image * text).sum(-1)


def _open_clip_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """open_clip's token layout: [sot] + BPE + [eot], zero padded to the context length."""
    rows = []
    for prompt in prompts:
        # "!" split as a word, never as a special token: encode each word of the text alone.
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        row = [tokenizer.bos_token_id, *ids[: CONTEXT - 2], tokenizer.eos_token_id]
        rows.append(row + [0] * (CONTEXT - len(row)))
    return torch.tensor(rows)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps")
    # The laion repositories' tokenizer (pad "!") is what the reward loads by default.
    byte_level_clip_tokenizer(pad_token="!").save_pretrained(root / "tokenizer")
    plain = byte_level_clip_tokenizer()
    torch.manual_seed(0)
    reference = OpenClipStyleCLIP(len(plain)).eval()
    with torch.no_grad():  # LayerNorms away from the identity, so their mapping is checked
        for module in reference.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    torch.save({"state_dict": reference.state_dict()}, root / "HPS_v2.1_compressed.pt")
    return root, reference, plain


@pytest.fixture
def ctx():
    return BuildContext(
        device=torch.device("cpu"), dtype=torch.float32, generator=torch.Generator().manual_seed(0)
    )


def _reward(files, ctx, **keys):
    root = files[0]
    keys.setdefault("model", str(root / "HPS_v2.1_compressed.pt"))
    return build_hpsv2(
        HPSv2Config(
            tokenizer=str(root / "tokenizer"), vision_heads=HEADS, text_heads=HEADS, **keys
        ),
        ctx,
    )


@pytest.mark.parametrize("size", [(32, 32), (40, 24), (20, 28)])
def test_scores_equal_the_open_clip_reference(files, ctx, size):
    _, reference, plain = files
    reward = _reward(files, ctx)
    images = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.score(
            ResizeLongestPadNormalize(IMAGE)(images), _open_clip_ids(plain, PROMPTS)
        )
    assert torch.allclose(reward(images, PROMPTS), expected, atol=1e-5)
    # Random weights still give different scores for different inputs: the check has teeth.
    assert expected.std() > 1e-3


def test_a_directory_holding_the_checkpoint_and_the_version_file_name(files, ctx, tmp_path):
    root = files[0]
    by_dir = _reward(files, ctx, model=str(root))
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(by_dir(images, PROMPTS[:2]), _reward(files, ctx)(images, PROMPTS[:2]))
    with pytest.raises(RewardLoadError, match="is a directory without HPS_v2_compressed.pt"):
        _reward(files, ctx, model=str(root), version="2.0")


def test_meets_the_reward_contract(files, ctx):
    reward = _reward(files, ctx, batch_size=2)
    assert reward.differentiable
    assert_reward_contract(reward, image_size=(36, 28), batch_size=3, atol=1e-5)


def test_gradient_reaches_the_pixels(files, ctx):
    reward = _reward(files, ctx)
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    reward(images, PROMPTS[:2]).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


def test_missing_and_unexpected_keys_are_named(files, ctx, tmp_path):
    state = dict(files[1].state_dict())
    del state["visual.ln_post.bias"]
    del state["transformer.resblocks.1.attn.in_proj_bias"]
    state["visual.extra"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(RewardLoadError) as err:
        _reward(files, ctx, model=str(tmp_path))
    message = str(err.value)
    assert "reward 'hpsv2'" in message
    assert (
        "2 missing key(s): transformer.resblocks.1.attn.in_proj_bias, visual.ln_post.bias"
        in message
    )
    assert "1 unexpected key(s): visual.extra" in message


def test_a_file_that_is_not_an_open_clip_checkpoint(files, ctx, tmp_path):
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(RewardLoadError, match="not an open_clip CLIP state dict"):
        _reward(files, ctx, model=str(tmp_path))
    (tmp_path / "HPS_v2.1_compressed.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RewardLoadError, match="cannot read the checkpoint"):
        _reward(files, ctx, model=str(tmp_path))


def test_heads_that_do_not_divide_the_width(files, ctx):
    with pytest.raises(RewardLoadError, match="vision_heads = 3 does not divide"):
        build_hpsv2(
            HPSv2Config(
                model=str(files[0]),
                tokenizer=str(files[0] / "tokenizer"),
                vision_heads=3,
                text_heads=HEADS,
            ),
            ctx,
        )


def test_the_hub_checkpoint_while_offline_says_how_to_use_a_local_copy(files, ctx, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardLoadError) as err:
        build_hpsv2(HPSv2Config(tokenizer=str(files[0] / "tokenizer")), ctx)
    message = str(err.value)
    assert "HPS_v2.1_compressed.pt" in message and "'xswu/HPSv2'" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_exclamation_marks_are_words_not_padding(files, ctx):
    reward = _reward(files, ctx)
    ids = reward.tokenize(["wow!"])["input_ids"][0]
    plain = files[2]
    assert ids[:4].tolist() == _open_clip_ids(plain, ["wow!"])[0, :4].tolist()


def test_bad_inputs_name_the_reward(files, ctx):
    with pytest.raises(ContractError, match="reward 'hpsv2': 1 images but 2 prompts"):
        _reward(files, ctx)(torch.rand(1, 3, 32, 32), ["a", "b"])


def test_listed_by_the_plugin_manager_from_its_distribution():
    pm = build_plugin_manager()
    spec = pm.registries.get("reward", "hpsv2")
    assert (spec.plugin, spec.distribution) == ("hpsv2", "gdmd-hpsv2")
    assert spec.validate_config({}).version == "2.1"
