"""Config models of the built-in target strategies (pydantic only: importable without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gdmd.config import ComponentConfig


class DMDConfig(ComponentConfig):
    """Plain DMD has no options: the renoise range lives in ``[train]``."""


class GDMDConfig(ComponentConfig):
    """Options of the ``gdmd`` target strategy."""

    k: int = Field(4, ge=2, le=64, description="Targets per sample (the group size K).")
    vary: Literal["t", "fake", "both"] = Field(
        "t",
        description='What differs between a group\'s targets: renoise time and noise ("t"), '
        'critic snapshot from the inner loop ("fake"), or both.',
    )
    alpha: float = Field(1.0, ge=0.0, description="Weight of the plain DMD anchor.")
    beta: float = Field(1.0, ge=0.0, description="Guidance strength: weight of the advantage.")
    clip: float = Field(
        1.0, gt=0.0, description="Advantages are clipped to [-clip, clip] and divided by clip."
    )
    score_step: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Rewards score x - score_step * g: 1 scores the implicit target itself; "
        "smaller values score a shorter step along each target's direction, an image closer "
        "to the student's sample. The regression targets are unchanged.",
    )
    weighting: Literal["advantage", "softmax"] = Field(
        "advantage",
        description='"advantage": alpha + beta * A_k (signed). "softmax": alpha + beta * '
        "(K * softmax_k(A_k * clip) - 1), positive when beta <= alpha.",
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="Rows (sample-target pairs) per teacher, critic, decoder and reward call "
        "when evaluating the B * K targets; None: all at once. [train] batch_size gives the "
        "activation peak of one plain DMD step. Changes no draw, only float rounding.",
    )


class DMDRConfig(ComponentConfig):
    """Options of the ``dmdr`` target strategy."""

    reward_scale: float = Field(
        1.0, ge=0.0, description="Multiplier of the reward loss added to the DMD loss."
    )
    hinge: float | None = Field(
        None,
        description="If set, the reward loss is relu(hinge - r) (DMDR uses 0.7 for CLIP/HPS); "
        "otherwise -r.",
    )


class RewardWeightedConfig(ComponentConfig):
    """Options of the ``reward-weighted`` target strategy."""

    beta: float = Field(1.0, ge=0.0, description="Temperature of the exp(beta * r) weights.")
    normalise_weights: bool = Field(
        True,
        description="Divide the weights by their batch mean so the step size matches plain DMD.",
    )
