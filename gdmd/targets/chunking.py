"""Evaluate a target group's model, decoder and reward calls a few rows at a time.

A ``gdmd`` group of ``K`` targets per sample runs the teacher (with CFG: twice the rows), the
critic, the decoder and every reward on ``B * K`` rows at once, so its activation peak grows
``K``-fold over a plain DMD step's. :func:`chunked_context` wraps those calls of a
:class:`~gdmd.interfaces.TargetContext` so each sees at most ``rows`` rows; the results are
concatenated in order. Every random draw stays where it was (the strategy draws all times and
noise before calling the models), so chunking changes no number beyond float rounding: the
models compute each row independently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gdmd.interfaces import Conditioning, TargetContext

__all__ = ["chunked_context"]


def _slices(total: int, rows: int) -> list[slice]:
    return [slice(i, min(i + rows, total)) for i in range(0, total, rows)]


def _chunked_model(call: Callable[..., torch.Tensor], rows: int) -> Callable[..., torch.Tensor]:
    def chunked(x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, *rest: Any) -> torch.Tensor:
        if x_t.shape[0] <= rows:
            return call(x_t, t, cond, *rest)
        parts = [
            call(x_t[s], t[s], {key: value[s] for key, value in cond.items()}, *rest)
            for s in _slices(x_t.shape[0], rows)
        ]
        return torch.cat(parts)

    return chunked


class _ChunkedDecoder:
    def __init__(self, decoder: Any, rows: int) -> None:
        self.decoder = decoder
        self.rows = rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.shape[0] <= self.rows:
            return self.decoder.decode(latents)
        return torch.cat(
            [self.decoder.decode(latents[s]) for s in _slices(latents.shape[0], self.rows)]
        )


class _ChunkedReward:
    def __init__(self, model: Any, rows: int) -> None:
        self.model = model
        self.rows = rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.shape[0] <= self.rows:
            return self.model(images, prompts)
        prompts = list(prompts)
        return torch.cat(
            [self.model(images[s], prompts[s]) for s in _slices(images.shape[0], self.rows)]
        )


def chunked_context(ctx: TargetContext, rows: int | None) -> TargetContext:
    """``ctx`` whose teacher, critic, decoder and reward calls take at most ``rows`` rows.

    ``rows = None``: ``ctx`` itself, unchanged. The student sample ``x`` and every draw are
    untouched; only the callables are wrapped.
    """
    if rows is None:
        return ctx
    return dataclasses.replace(
        ctx,
        real_x0=_chunked_model(ctx.real_x0, rows),
        fake_x0=_chunked_model(ctx.fake_x0, rows),
        decoder=_ChunkedDecoder(ctx.decoder, rows),
        rewards=[
            dataclasses.replace(reward, model=_ChunkedReward(reward.model, rows))
            for reward in ctx.rewards
        ],
    )
