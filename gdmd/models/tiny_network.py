"""The network of the ``tiny-unet`` family: a word-level text encoder and a pixel-space
U-Net that predicts the flow-matching velocity from noisy pixels, time and text.

:mod:`gdmd.models.tiny` describes the architecture and wraps these modules into the
:class:`~gdmd.models.tiny.TinyDiffusionModel` the family's factory builds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gdmd.models.tiny_config import TinyUNetConfig

__all__ = ["TextEncoder", "UNet"]


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _zero_init(module: nn.Module) -> nn.Module:
    # Residual branches start as the identity (as in ADM, Dhariwal & Nichol 2021): a fresh
    # network predicts the same for every prompt and trains stably from there.
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def _timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of ``1000 t`` (Vaswani et al., 2017; DDPM's time embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class _Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` with an optional key mask."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = _zero_init(nn.Linear(dim, dim))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, length, dim = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(batch, -1, self.heads, dim // self.heads).transpose(1, 2)

        key, value = self.to_kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(
            split(self.to_q(x)), split(key), split(value), attn_mask=mask
        )
        return self.to_out(out.transpose(1, 2).reshape(batch, length, dim))


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__(
            nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim)
        )
        _zero_init(self[-1])


class _TextLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attention = _Attention(width, width, heads)
        self.feed_forward = _FeedForward(width, 4)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attention(h, h, attn_mask)
        return x + self.feed_forward(x)


class TextEncoder(nn.Module):
    """Word embeddings + learned positions + pre-norm transformer layers.

    Returns per-token states with a learned null token prepended (``[B, 1 + L, W]``), their
    key mask, and the masked mean of the word states (zeros for the empty prompt).
    """

    def __init__(self, vocab_size: int, max_tokens: int, width: int, layers: int, heads: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(max_tokens, width) * 0.02)
        self.null_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.layers = nn.ModuleList(_TextLayer(width, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        # Every position may attend to itself, so padding rows (and the all-padding empty
        # prompt) never see an all-masked softmax.
        eye = torch.eye(tokens.shape[1], dtype=torch.bool, device=tokens.device)
        attn_mask = (mask[:, None, :] | eye)[:, None]
        for layer in self.layers:
            x = layer(x, attn_mask)
        x = self.final_norm(x)
        weights = mask.to(x.dtype)[..., None]
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        states = torch.cat([self.null_token.expand(x.shape[0], -1, -1), x], dim=1)
        keys = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return states, keys, pooled


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with FiLM (scale, shift) from the embedding in between."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = _zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class _AttentionBlock(nn.Module):
    """Self-attention over pixels, cross-attention to the text tokens, feed-forward."""

    def __init__(self, channels: int, text_width: int, heads: int) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(channels)
        self.self_attention = _Attention(channels, channels, heads)
        self.norm_cross = nn.LayerNorm(channels)
        self.cross_attention = _Attention(channels, text_width, heads)
        self.feed_forward = _FeedForward(channels, 2)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = x.flatten(2).transpose(1, 2)
        normed = self.norm_self(h)
        h = h + self.self_attention(normed, normed)
        h = h + self.cross_attention(self.norm_cross(h), text, text_mask[:, None, None, :])
        h = h + self.feed_forward(h)
        return h.transpose(1, 2).reshape(batch, channels, height, width)


class _Level(nn.Module):
    def __init__(
        self,
        in_channels: int,
        channels: int,
        emb_dim: int,
        attention: bool,
        text_width: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.res = _ResBlock(in_channels, channels, emb_dim)
        self.attention = _AttentionBlock(channels, text_width, heads) if attention else None

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attention is None else self.attention(x, text, text_mask)


class UNet(nn.Module):
    """The velocity network: pixels ``[B, 3, S, S]`` + time + text -> ``[B, 3, S, S]``."""

    _TIME_FEATURES = 64

    def __init__(self, config: TinyUNetConfig) -> None:
        super().__init__()
        arch = config.architecture()
        chans: list[int] = arch["channels"]
        emb_dim = 4 * chans[0]
        attend = set(arch["attention_levels"])
        width: int = arch["text_width"]
        heads: int = arch["heads"]
        self.time_mlp = nn.Sequential(
            nn.Linear(self._TIME_FEATURES, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.text_to_emb = nn.Linear(width, emb_dim)
        self.stem = nn.Conv2d(12, chans[0], 3, padding=1)
        self.down = nn.ModuleList(
            _Level(c, c, emb_dim, i in attend, width, heads) for i, c in enumerate(chans)
        )
        self.downsample = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(len(chans) - 1)
        )
        self.mid_res1 = _ResBlock(chans[-1], chans[-1], emb_dim)
        self.mid_attention = _AttentionBlock(chans[-1], width, heads)
        self.mid_res2 = _ResBlock(chans[-1], chans[-1], emb_dim)
        self.up = nn.ModuleList(
            _Level(2 * c, c, emb_dim, i in attend, width, heads) for i, c in enumerate(chans)
        )
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(len(chans) - 1)
        )
        self.out_norm = nn.GroupNorm(_groups(chans[0]), chans[0])
        self.out_conv = _zero_init(nn.Conv2d(chans[0], 12, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        pooled: torch.Tensor,
    ) -> torch.Tensor:
        features = _timestep_features(t, self._TIME_FEATURES).to(x.dtype)
        emb = self.time_mlp(features) + self.text_to_emb(pooled)
        h = self.stem(F.pixel_unshuffle(x, 2))
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, emb, text, text_mask)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid_res1(h, emb)
        h = self.mid_attention(h, text, text_mask)
        h = self.mid_res2(h, emb)
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([h, skips.pop()], dim=1), emb, text, text_mask)
            if i > 0:
                h = self.upsample[i - 1](h)
        return F.pixel_shuffle(self.out_conv(F.silu(self.out_norm(h))), 2)
