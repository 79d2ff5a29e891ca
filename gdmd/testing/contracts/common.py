"""What the contract checkers share: the default prompts, naming the component in a message,
failing, and comparing tensors. Internal to :mod:`gdmd.testing.contracts`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import torch

#: Prompts the checkers use when none are given: distinct, so a reward that mixes up which
#: prompt belongs to which image gives different scores.
CONTRACT_PROMPTS: tuple[str, ...] = (
    "a red circle left of a blue square",
    "two green triangles",
    "a yellow star above a purple diamond",
    "three orange crosses",
    "a cyan square below a white circle",
    "one black triangle",
    "a pink diamond right of a gray star",
    "four blue circles",
)

def describe(component: object, kind: str) -> str:
    """``reward my_pkg.MyReward``: the kind and where the component's class is defined."""
    if callable(component) and hasattr(component, "__qualname__"):
        owner: Any = component  # a plain function or a class used as a component
    else:
        owner = type(component)
    return f"{kind} {owner.__module__}.{owner.__qualname__}"


def fail(message: str) -> NoReturn:
    # Raised explicitly instead of with ``assert`` so the checks survive ``python -O``.
    raise AssertionError(message)


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


def summary(value: object) -> str:
    """How a returned value reads in a message: ``Tensor [3] float32 on cpu`` or its type."""
    if isinstance(value, torch.Tensor):
        return f"Tensor {list(value.shape)} {value.dtype} on {value.device}"
    return type(value).__name__


def _exact(a: torch.Tensor) -> torch.Tensor:
    # Compared in float64 on the CPU: some devices (MPS) have no float64.
    return a.detach().cpu().double()


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((_exact(a) - _exact(b)).abs().max())


def close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(_exact(a), _exact(b), rtol=0.0, atol=atol))


def image_shape(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        height = width = image_size
    else:
        height, width = image_size
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return height, width


def batch_prompts(prompts: Sequence[str] | None, batch_size: int) -> list[str]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if prompts is None:
        return [CONTRACT_PROMPTS[i % len(CONTRACT_PROMPTS)] for i in range(batch_size)]
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for batch_size {batch_size}")
    return list(prompts)
