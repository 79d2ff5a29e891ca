"""The toy components as plugins build them: configs, factories, cheap imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import torch

from gdmd.interfaces import BuildContext, PromptSource, RewardModel
from gdmd.toy import alignment
from gdmd.toy.alignment import AlignmentArchitecture, AlignmentModel
from gdmd.toy.factories import (
    ToyAlignmentRewardConfig,
    ToyCheckerRewardConfig,
    ToyPromptsConfig,
    build_alignment_reward,
    build_checker_reward,
    build_toy_prompts,
)

ROOT = Path(__file__).resolve().parents[2]


def context() -> BuildContext:
    return BuildContext(
        device=torch.device("cpu"), dtype=torch.float32, generator=torch.Generator()
    )


def test_light_modules_import_no_torch() -> None:
    code = (
        "import sys, gdmd.toy, gdmd.toy.factories, gdmd.toy.grammar, gdmd.toy.cache; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_config_defaults_match_the_training_defaults() -> None:
    config = ToyAlignmentRewardConfig()
    assert config.train_steps == alignment.DEFAULT_STEPS
    assert config.batch_size == alignment.DEFAULT_BATCH_SIZE
    with pytest.raises(pydantic.ValidationError):
        ToyAlignmentRewardConfig(trian_steps=3)  # type: ignore[call-arg]


def test_prompt_config_names_a_wrong_category() -> None:
    with pytest.raises(pydantic.ValidationError, match="categories.0"):
        ToyPromptsConfig(categories=("singel",))  # type: ignore[arg-type]
    built = build_toy_prompts(ToyPromptsConfig(categories=("position",)), context())
    assert built.categories == ("position",)
    validation = build_toy_prompts(ToyPromptsConfig(split="validation"), context())
    assert validation.split == "validation"
    assert not set(validation.evaluation_prompts()) & set(built.evaluation_prompts())
    with pytest.raises(pydantic.ValidationError, match="split"):
        ToyPromptsConfig(split="test")  # type: ignore[arg-type]


def test_factories_build_protocol_conforming_components(tmp_path: Path) -> None:
    checker = build_checker_reward(ToyCheckerRewardConfig(), context())
    assert isinstance(checker, RewardModel) and not checker.differentiable
    prompts = build_toy_prompts(ToyPromptsConfig(eval_per_category=2), context())
    assert isinstance(prompts, PromptSource) and len(prompts.evaluation_prompts()) == 10
    tiny = AlignmentArchitecture(embed_dim=8, image_widths=(4, 4, 4), text_width=8, text_heads=1)
    AlignmentModel(tiny).save_pretrained(tmp_path)
    reward = build_alignment_reward(ToyAlignmentRewardConfig(path=str(tmp_path)), context())
    assert isinstance(reward, RewardModel) and reward.differentiable
    assert reward(torch.zeros(1, 3, 32, 32), ["a red circle"]).shape == (1,)
