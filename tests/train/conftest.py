"""A tiny recipe that runs the whole loop on CPU in a second or two."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

TINY_ARCHITECTURE = {
    "image_size": 8,
    "channels": (8, 16),
    "attention_levels": (-1,),
    "text_width": 16,
    "text_layers": 1,
    "heads": 2,
}


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny-unet whose zero-initialised output layers are perturbed, as a trained
    teacher's would be, so every parameter gets a gradient from the first step."""
    import torch

    from gdmd.models.tiny import TinyDiffusionModel
    from gdmd.models.tiny_config import TinyUNetConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyDiffusionModel(TinyUNetConfig(**TINY_ARCHITECTURE))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    directory = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(directory)
    return directory


def tiny_recipe(
    out: Path,
    teacher: Path,
    *,
    target: str = 'kind = "gdmd"\nk = 2',
    rewards: str = '[reward.red]\nkind = "channel"\nchannel = "red"',
    train: str = "",
    name: str = "tiny",
) -> str:
    return f"""
[run]
name = "{name}"
seed = 7
output_dir = "{out}"

[teacher]
kind = "tiny-unet"
model = "{teacher}"
guidance_scale = 2.0

[student]
steps = 2

[critic]

{rewards}

[target]
{target}

[prompts]
kind = "list"
prompts = ["a red circle", "a blue square", "two green triangles"]
eval_prompts = ["a red square", "a blue circle"]

[train]
steps = 3
batch_size = 2
critic_steps = 2
student_lr = 1e-3
critic_lr = 1e-3
checkpoint_every = 1
keep_checkpoints = 5
{train}

[log]
trackers = ["jsonl"]
"""


@pytest.fixture
def write_recipe(tmp_path: Path, teacher_dir: Path) -> Callable[..., Path]:
    def write(filename: str = "recipe.toml", **kwargs: str) -> Path:
        path = tmp_path / filename
        path.write_text(tiny_recipe(tmp_path / "runs", teacher_dir, **kwargs))
        return path

    return write
