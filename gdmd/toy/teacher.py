"""The toy teacher: a ``tiny-unet`` trained with flow matching on renders, cached by config.

Registered as model kind ``toy-teacher``. As a teacher it loads ``path``, the shipped default
teacher (:mod:`gdmd.toy.shipped`) when its settings are the defaults, or trains on first use
(minutes on a CPU) and reuses the cached weights afterwards; as a student or critic
(``init_from = "teacher"``) it is a trainable copy of the teacher. Importing this module
imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from gdmd.config import ComponentConfig
from gdmd.toy.grammar import Category

if TYPE_CHECKING:
    from gdmd.interfaces import BuildContext

#: Changes whenever the training procedure changes what a cached teacher holds.
TEACHER_VERSION = 1


class ToyTeacherConfig(ComponentConfig):
    """Options of the ``toy-teacher`` model family."""

    path: str | None = Field(
        None,
        description="Directory of a saved teacher (tiny-unet save_pretrained). Unset: the teacher "
        "gdmd ships when the other settings are the defaults; otherwise train one on first use "
        "and reuse it from the cache ($GDMD_CACHE_DIR, default ~/.cache/gdmd).",
    )
    # 6,000 steps: the 3,000-step teacher left its own 4-step sampler no gap to close
    # (docs/benchmarks.md, "Headroom"); this one is shipped (gdmd/toy/shipped.py).
    train_steps: int = Field(6000, ge=1, description="Flow-matching steps when trained here.")
    batch_size: int = Field(32, ge=1, description="Training batch size when trained here.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate when trained here.")
    channels: tuple[int, ...] = Field(
        (32, 64, 96), min_length=1, description="UNet channels per resolution level."
    )
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay of the teacher weights.")
    seed: int = Field(0, ge=0, description="Training seed when trained here.")
    categories: tuple[Category, ...] | None = Field(
        None,
        min_length=1,
        description="Train only on these prompt categories' training prompts. Unset: all.",
    )


def teacher_cache_settings(config: ToyTeacherConfig) -> dict[str, Any]:
    """Everything that changes what training produces: the cache key's content."""
    settings = config.model_dump(exclude={"path", "categories"})
    settings["channels"] = list(config.channels)
    if config.categories is not None:
        # Left out when unset, so adding the option kept every existing cache entry's key.
        settings["categories"] = list(config.categories)
    settings["version"] = TEACHER_VERSION
    return settings


def train_toy_teacher(config: ToyTeacherConfig, directory: Any) -> None:
    """Train a teacher as ``config`` says and ``save_pretrained`` it into ``directory``."""
    import torch

    from gdmd.models.pretrain import pretrain_flow_matching
    from gdmd.models.tiny import TinyDiffusionModel, TinyUNetConfig
    from gdmd.progress import task
    from gdmd.toy.grammar import training_prompts
    from gdmd.toy.render import training_batches

    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: fork_rng(devices=[]) would not restore reseeded CUDA ones.
        torch.default_generator.manual_seed(config.seed)
        model = TinyDiffusionModel(TinyUNetConfig(channels=config.channels))
    prompts = training_prompts(categories=config.categories)
    batches = training_batches(prompts, config.batch_size, seed=config.seed)
    with task("training the toy teacher", config.train_steps) as update:
        pretrain_flow_matching(
            model,
            batches,
            config.train_steps,
            config.lr,
            generator,
            ema_decay=config.ema_decay,
            progress=lambda step, loss: update(step, f"loss {loss:.4f}"),
        )
    model.save_pretrained(directory)


def build_toy_teacher(config: ToyTeacherConfig, ctx: BuildContext) -> Any:
    """Factory of ``toy-teacher``: a copy of ``init_from``, the model at ``path``, or the cache."""
    from gdmd.models.tiny import TinyDiffusionModel, TinyUNetConfig, build_tiny_unet
    from gdmd.toy.shipped import shipped_or_cached

    if ctx.components.get("init_from") is not None:
        return build_tiny_unet(TinyUNetConfig(channels=config.channels), ctx)
    if config.path is not None:
        return TinyDiffusionModel.from_pretrained(config.path).to(ctx.device)
    entry = shipped_or_cached(
        "toy-teacher", teacher_cache_settings(config), lambda d: train_toy_teacher(config, d)
    )
    return TinyDiffusionModel.from_pretrained(entry).to(ctx.device)
