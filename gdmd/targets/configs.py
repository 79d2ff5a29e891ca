"""Config models of the built-in target strategies (pydantic only: importable without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gdmd.config import ComponentConfig


class DMDConfig(ComponentConfig):
    """Plain DMD has no options: the renoise range lives in ``[train]``."""


class GDMDConfig(ComponentConfig):
    """Options of the ``gdmd`` target strategy."""

    k: int = Field(
        4,
        ge=2,
        le=64,
        description='The group size K: targets per sample (group = "targets"), or samples per '
        'prompt (group = "samples").',
    )
    group: Literal["targets", "samples"] = Field(
        "targets",
        description='What a group is: "targets": K DMD targets of one student sample (varied '
        'per vary); "samples": K student samples of one prompt (different initial noise), '
        "one DMD target each, advantages taken over the prompt's K samples (GRPO's group). "
        "With \"samples\" the student batch holds each prompt K times in a row, so [train] "
        "batch_size must be a multiple of k.",
    )
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
        "when evaluating the B * K targets; None: all at once. [train] batch_size makes each "
        "call as large as a plain DMD step's. Changes no draw, only float rounding.",
    )
    scored: Literal["normalised", "unnormalised"] = Field(
        "normalised",
        description='What the rewards score: "normalised" scores x - score_step * g, g the '
        'normalised DMD gradient (the implicit target itself at score_step 1); "unnormalised" '
        "scores x - score_step * (x0_fake - x0_real), the same direction before DMD's "
        "normaliser, a much shorter step. The regression targets are x - g either way.",
    )
    group_t: Literal["independent", "shared", "stratified"] = Field(
        "independent",
        description='How a t-varied group draws its renoise times (vary = "t" or "both"): '
        '"independent": one time per target; "shared": one time per group, only the noise '
        'differs; "stratified": one time in each K-th of [train] renoise_range (a randomly '
        "shifted lattice). The noise differs between targets in all three. With group = "
        '"samples" the group is a prompt\'s K samples, each with one target.',
    )
    t_baseline: bool = Field(
        False,
        description="Subtract the batch's least-squares line of reward against renoise time "
        "before the group advantages (a per-t baseline), so a group is not ranked by its "
        "targets' noise levels.",
    )
    reward_start_step: int = Field(
        0,
        ge=0,
        description="Student update at which the reward term starts. Before it every target "
        "gets weight 1 (plain DMD over the group) and nothing is scored: a DMD warm-up, as "
        "DMDR's cold start.",
    )

    @model_validator(mode="after")
    def _group_t_needs_t(self) -> GDMDConfig:
        if self.group == "samples" and self.vary != "t":
            raise ValueError(
                f'vary = "{self.vary}" needs group = "targets": with group = "samples" each '
                "sample has one target, made with the current critic"
            )
        if self.group_t != "independent" and self.vary == "fake":
            raise ValueError(
                f'group_t = "{self.group_t}" needs vary = "t" or "both": with vary = "fake" '
                "a group shares one time and one noise draw"
            )
        return self


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
