"""Fake components for the foundation tests (registry, recipes, CLI).

The tests build their own plugin manager holding only the built-in prompt sources and these
fakes, so their golden messages do not change when gdmd gains built-in components.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

import gdmd
from gdmd.config import ComponentConfig
from gdmd.manager import GdmdPluginManager, build_plugin_manager


class LoraConfig(BaseModel):
    model_config = {"extra": "forbid"}

    rank: int = Field(4, ge=1)


class FakeUnetConfig(ComponentConfig):
    """A model family's options."""

    width: int = Field(8, ge=1, description="Channels.")
    checkpoint: str | None = Field(None, description="Weights to load.")
    lora: LoraConfig | None = None


class ClipConfig(ComponentConfig):
    model_name: str = "ViT-B-32"
    scale: float = Field(1.0, gt=0)


class GdmdTargetConfig(ComponentConfig):
    k: int = Field(4, ge=1)
    vary: Literal["t", "fake", "both"] = "t"
    alpha: float = 1.0
    beta: float = 1.0


def _factory(config: Any, ctx: Any) -> dict[str, Any]:
    return {"config": config, "ctx": ctx}


class FakePlugin:
    """Registers fake models, rewards and targets through the real hooks."""

    @gdmd.hookimpl
    def gdmd_register_models(self, register: Any) -> None:
        register("fake-unet", _factory, config=FakeUnetConfig, summary="A fake UNet.")
        register("teacher-only", _factory, roles=("teacher",), summary="Cannot be trained.")

    @gdmd.hookimpl
    def gdmd_register_rewards(self, register: Any) -> None:
        register("clip", _factory, config=ClipConfig, summary="Fake CLIP score.")
        register("hpsv2", _factory)
        register("toy-checker", _factory)

    @gdmd.hookimpl
    def gdmd_register_targets(self, register: Any) -> None:
        register("dmd", _factory, summary="Plain DMD.")
        register("gdmd", _factory, config=GdmdTargetConfig, summary="Reward-guided DMD.")


@dataclass
class Dist:
    name: str
    version: str


@dataclass
class FakeEntryPoint:
    """Stands in for an importlib.metadata entry point; ``plugin`` may be an exception to
    raise on load."""

    name: str
    plugin: Any
    dist: Dist | None = None
    value: str = "module"

    def load(self) -> Any:
        if isinstance(self.plugin, Exception):
            raise self.plugin
        return self.plugin


VALID_RECIPE = """\
[run]
name = "fake"
seed = 3

[teacher]
kind = "fake-unet"
guidance_scale = 4.5
width = 16

[student]
steps = 2
lora = { rank = 8 }

[reward.clip]
weight = 0.5

[reward.checker]
kind = "toy-checker"
normalise = "none"

[target]
kind = "gdmd"
k = 3

[prompts]
kind = "list"
prompts = ["a red circle", "two blue squares"]

[train]
steps = 10
grad_clip = false
"""


@pytest.fixture
def fake_pm() -> GdmdPluginManager:
    """A plugin manager with the built-in prompt sources and :class:`FakePlugin`."""
    pm = build_plugin_manager(load_entrypoints=False, builtins=["gdmd.builtins.prompts"])
    pm.register(FakePlugin(), name="fake-plugin")
    return pm


@pytest.fixture
def write_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write recipe text to ``recipes/x.toml`` under a temporary working directory and
    return that relative path, as a user would type it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()

    def write(text: str, name: str = "x.toml") -> str:
        path = Path("recipes") / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write
