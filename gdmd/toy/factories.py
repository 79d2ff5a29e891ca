"""Config models and factories of the toy components, for plugin registration.

Register (in gdmd's built-in plugin)::

    rewards:  "toy-alignment" -> build_alignment_reward, ToyAlignmentRewardConfig
              "toy-checker"   -> build_checker_reward,   ToyCheckerRewardConfig
    prompts:  "toy"           -> build_toy_prompts,      ToyPromptsConfig

Importing this module imports no torch: the factories import their components when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from gdmd.config import ComponentConfig
from gdmd.toy.grammar import Category

if TYPE_CHECKING:
    from gdmd.interfaces import BuildContext
    from gdmd.toy.alignment import AlignmentReward
    from gdmd.toy.checker import CheckerReward
    from gdmd.toy.prompts import ToyPrompts


class ToyAlignmentRewardConfig(ComponentConfig):
    """The learned toy prompt-alignment reward (a tiny CLIP trained on renders)."""

    path: str | None = Field(
        default=None,
        description="Directory of a saved alignment model (model.safetensors + config.json). "
        "Unset: train one on first use and reuse it from the cache ($GDMD_CACHE_DIR).",
    )
    train_steps: int = Field(
        default=1000, ge=1, description="Training steps when trained on first use."
    )
    batch_size: int = Field(
        default=64, ge=2, description="Training batch size when trained on first use."
    )
    seed: int = Field(default=0, description="Training seed when trained on first use.")


class ToyCheckerRewardConfig(ComponentConfig):
    """The exact rule-based checker as a 0/1 reward (not differentiable). No options."""


class ToyPromptsConfig(ComponentConfig):
    """The toy grammar's prompts: category-balanced training stream, held-out evaluation list."""

    eval_per_category: int | None = Field(
        default=24,
        ge=1,
        description="Evaluation prompts per category (held-out prompts repeat in turn when a "
        "category has fewer). Unset: the largest category's held-out count.",
    )
    categories: tuple[Category, ...] | None = Field(
        default=None,
        min_length=1,
        description="Only these prompt categories, for training and evaluation. Unset: all.",
    )
    split: Literal["evaluation", "validation"] = Field(
        default="evaluation",
        description='Which prompts evaluation uses: "evaluation", the held-out split; '
        '"validation", prompts carved out of the training split (which training then never '
        "draws), for tuning without touching the evaluation prompts.",
    )


def build_alignment_reward(config: ToyAlignmentRewardConfig, ctx: BuildContext) -> AlignmentReward:
    """Load (``path``) or train-on-first-use the alignment model, on ``ctx.device``."""
    from gdmd.toy.alignment import AlignmentModel, AlignmentReward, load_or_train_alignment_model

    if config.path is not None:
        model = AlignmentModel.from_pretrained(config.path)
    else:
        model = load_or_train_alignment_model(
            steps=config.train_steps, batch_size=config.batch_size, seed=config.seed
        )
    return AlignmentReward(model.to(ctx.device))


def build_checker_reward(config: ToyCheckerRewardConfig, ctx: BuildContext) -> CheckerReward:
    """The checker reward; it runs on CPU and returns scores on the images' device."""
    from gdmd.toy.checker import CheckerReward

    return CheckerReward()


def build_toy_prompts(config: ToyPromptsConfig, ctx: BuildContext) -> ToyPrompts:
    """The toy prompt source."""
    from gdmd.toy.prompts import ToyPrompts

    return ToyPrompts(
        eval_per_category=config.eval_per_category,
        categories=config.categories,
        split=config.split,
    )
