"""``gdmd plugin new``: write a plugin distribution that works and tests itself as generated.

``gdmd plugin new gdmd-aesthetic --kind reward`` writes::

    gdmd-aesthetic/
      pyproject.toml            the distribution, with its [project.entry-points.gdmd]
      README.md                 install, test, use in a recipe, publish
      gdmd_aesthetic/
        __init__.py             the plugin: config model, factory, hook (imports no torch)
        reward.py               the component itself (imports torch)
      tests/test_gdmd_aesthetic.py   the contract checker and a test of the behaviour

The plugin module and the component live in two files so that the module gdmd imports to
list plugins stays cheap, as :mod:`gdmd.hookspecs` asks. Imports no torch.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from string import Template
from typing import Annotated

import typer

from gdmd import PLUGIN_API_VERSION, __version__
from gdmd.errors import GdmdError

__all__ = ["PluginKind", "ScaffoldError", "plugin_app", "scaffold_plugin"]

# PEP 508 distribution names.
_DISTRIBUTION_NAME = re.compile(r"[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9]", re.IGNORECASE)


class ScaffoldError(GdmdError):
    """``gdmd plugin new`` cannot write the package: a bad name or an existing folder."""

    exit_code = 2


class PluginKind(str, Enum):
    """What the scaffolded plugin registers."""

    reward = "reward"
    model = "model"
    target = "target"


@dataclass(frozen=True)
class _Names:
    """Every name the templates use, derived from the distribution name."""

    distribution: str  # gdmd-aesthetic, as given
    module: str  # gdmd_aesthetic
    component: str  # aesthetic: the entry-point name and the registered name
    camel: str  # Aesthetic

    @classmethod
    def parse(cls, name: str) -> _Names:
        if not _DISTRIBUTION_NAME.fullmatch(name):
            raise ScaffoldError(
                f'"{name}" is not a valid distribution name: use letters, digits, "-", "_" and '
                '".", starting and ending with a letter or digit (e.g. gdmd-aesthetic)'
            )
        normalised = re.sub(r"[-_.]+", "-", name).lower()
        if normalised == "gdmd":
            raise ScaffoldError('"gdmd" is gdmd\'s own name; call the plugin gdmd-<something>')
        module = normalised.replace("-", "_")
        if not module.isidentifier() or keyword.iskeyword(module):
            raise ScaffoldError(
                f'"{name}" would give the module name "{module}", which is not a Python '
                "identifier; start the name with a letter"
            )
        component = normalised.removeprefix("gdmd-")
        camel = "".join(part.capitalize() for part in component.split("-"))
        if not camel[0].isalpha():
            camel = "Gdmd" + camel
        return cls(name, module, component, camel)


def scaffold_plugin(name: str, kind: PluginKind | str, parent: str | Path) -> list[Path]:
    """Write the plugin distribution ``name`` registering one ``kind`` into ``parent/name``.

    Returns the files written. Raises :class:`ScaffoldError` for a name that is not a valid
    distribution name (or would not give a Python module name) and for an existing folder.
    """
    kind = PluginKind(kind)
    names = _Names.parse(name)
    parent = Path(parent)
    if parent.exists() and not parent.is_dir():
        raise ScaffoldError(f"--dir {parent} is not a folder")
    root = parent / name
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another name or --dir")
    values = {
        "distribution": names.distribution,
        "module": names.module,
        "component": names.component,
        "kind": kind.value,
        "cls": names.camel + kind.value.capitalize(),
        "config": names.camel + "Config",
        "gdmd_version": __version__,
        "api": str(PLUGIN_API_VERSION),
    }
    files = {
        Path("pyproject.toml"): _PYPROJECT,
        Path("README.md"): _README[kind],
        Path(names.module) / "__init__.py": _PLUGIN[kind],
        Path(names.module) / f"{kind.value}.py": _COMPONENT[kind],
        Path("tests") / f"test_{names.module}.py": _TEST[kind],
    }
    written = []
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values), encoding="utf-8")
        written.append(path)
    return written


def plugin_app() -> typer.Typer:
    """The ``gdmd plugin`` command group."""
    app = typer.Typer(no_args_is_help=True, help="Tools for plugin authors.")

    @app.command("new")
    def new(
        name: Annotated[
            str, typer.Argument(help="Distribution name of the plugin, e.g. gdmd-aesthetic.")
        ],
        kind: Annotated[PluginKind, typer.Option("--kind", help="What the plugin registers.")],
        directory: Annotated[
            Path,
            typer.Option("--dir", help="Folder to create the package in."),
        ] = Path("."),
    ) -> None:
        """Write a plugin package whose tests pass as generated.

        The package has a pyproject.toml with the gdmd entry point, the plugin module, the
        component, a README and a test that runs gdmd's contract checker. Docs:
        docs/plugin-tutorial.md.
        """
        from rich.console import Console
        from rich.markup import escape

        written = scaffold_plugin(name, kind, directory)
        root = directory / name
        console = Console(highlight=False, soft_wrap=True)
        console.print(f"[green]created[/] {escape(str(root))} ({kind.value} plugin):")
        for path in written:
            console.print(f"  {escape(str(path.relative_to(root)))}")
        console.print(
            f'next: cd {escape(str(root))} && pip install -e ".\\[test]" && python -m pytest'
        )

    return app


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "A gdmd $kind plugin: $component."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["gdmd>=$gdmd_version"]

[project.optional-dependencies]
test = ["pytest>=7.2"]

# gdmd finds the plugin through this entry point; its name is the plugin's name.
[project.entry-points.gdmd]
$component = "$module"

[tool.setuptools]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_README_TEMPLATE = """\
# $distribution

A [gdmd](https://pypi.org/project/gdmd/) plugin that registers the $kind `$component`.

## Install and test

```sh
pip install -e ".[test]"
python -m pytest
gdmd list-plugins          # shows $component, from $distribution 0.1.0
```

The tests run gdmd's contract checker (`gdmd.testing.assert_${kind}_contract`) on the
$kind: shapes, devices, determinism and the other rules gdmd's training loop relies on.

## Use it in a recipe

```toml
$recipe
```

`gdmd schema` includes the options of `$config` once the plugin is installed, so an editor
pointed at the schema completes and checks them.

## Layout

- `$module/__init__.py`: the plugin gdmd imports through the entry point. It declares
  `GDMD_PLUGIN_API` (the plugin API it is written for), the config model and the factory, and
  registers them with `gdmd_register_${kind}s`. Keep it free of heavy imports:
  `gdmd list-plugins` imports every plugin.
- `$module/$kind.py`: the $kind itself, imported by the factory when a recipe builds it.

## Publish

```sh
python -m build
python -m twine upload dist/*
```
"""

_RECIPES = {
    PluginKind.reward: "[reward.$component]\nweight = 1.0\ntarget = 0.5",
    PluginKind.target: '[target]\nkind = "$component"\nweight = 1.0',
    PluginKind.model: '[teacher]\nkind = "$component"\nmodel = "path/to/saved/teacher"\n\n'
    '[student]\ninit_from = "teacher"',
}

_README = {kind: _README_TEMPLATE.replace("$recipe", recipe) for kind, recipe in _RECIPES.items()}

_PLUGIN_HEADER = '''\
"""$distribution: a gdmd plugin that registers the $kind ``$component``.

gdmd imports this module through the ``gdmd`` entry point in pyproject.toml. Keep it cheap to
import (``gdmd list-plugins`` imports every plugin): the $kind and torch are imported by the
factory, when a recipe builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gdmd
from gdmd.config import ComponentConfig
from pydantic import Field

if TYPE_CHECKING:
    from gdmd.interfaces import BuildContext
    from gdmd.registry import Register

    from $module.$kind import $cls

#: The gdmd plugin API this plugin is written for (gdmd.PLUGIN_API_VERSION).
GDMD_PLUGIN_API = $api
'''

_PLUGIN = {
    PluginKind.reward: _PLUGIN_HEADER
    + '''

class $config(ComponentConfig):
    """Options of the ``$component`` reward: the keys of its ``[reward.<label>]`` table."""

    target: float = Field(0.5, ge=0.0, le=1.0, description="The mean brightness that scores best.")


def build_reward(config: $config, ctx: BuildContext) -> $cls:
    """Build the reward for ``ctx.device``."""
    from $module.reward import $cls

    return $cls(config.target, ctx.device)


@gdmd.hookimpl
def gdmd_register_rewards(register: Register) -> None:
    register(
        "$component",
        build_reward,
        config=$config,
        summary="Prefers images of a given mean brightness ($distribution).",
    )
''',
    PluginKind.target: _PLUGIN_HEADER
    + '''

class $config(ComponentConfig):
    """Options of the ``$component`` target strategy: the keys of the ``[target]`` table."""

    weight: float = Field(1.0, gt=0.0, description="Weight of every sample's DMD target.")


def build_target(config: $config, ctx: BuildContext) -> $cls:
    """Build the target strategy."""
    from $module.target import $cls

    return $cls(config.weight)


@gdmd.hookimpl
def gdmd_register_targets(register: Register) -> None:
    register(
        "$component",
        build_target,
        config=$config,
        summary="One DMD target per sample with a fixed weight ($distribution).",
    )
''',
    PluginKind.model: _PLUGIN_HEADER
    + '''

class $config(ComponentConfig):
    """Options of the ``$component`` model family: keys of ``[teacher]``, ``[student]``,
    ``[critic]``."""

    model: str | None = Field(
        None, description="Directory written by save_pretrained; unset: random weights."
    )
    image_size: int = Field(8, ge=2, description="Side of the square RGB images, in pixels.")
    width: int = Field(16, ge=1, description="Channels of the hidden layer.")
    buckets: int = Field(256, ge=1, description="Hash buckets for prompt words.")


def build_model(config: $config, ctx: BuildContext) -> $cls:
    """A copy of ``ctx.components["init_from"]`` (a student or critic initialised from the
    teacher), the model saved at ``config.model``, or random weights drawn from
    ``ctx.generator``; on ``ctx.device``."""
    import copy

    import torch

    from $module.model import $cls

    init_from = ctx.components.get("init_from")
    if isinstance(init_from, $cls):
        return copy.deepcopy(init_from).requires_grad_(True).train().to(ctx.device)
    if config.model is not None:
        return $cls.from_pretrained(config.model).to(ctx.device)
    seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator, device=ctx.generator.device))
    # Initialise from ctx.generator's draw without touching the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        model = $cls(config.image_size, config.width, config.buckets)
    return model.to(ctx.device)


@gdmd.hookimpl
def gdmd_register_models(register: Register) -> None:
    register(
        "$component",
        build_model,
        config=$config,
        summary="A small pixel-space flow-matching model ($distribution).",
        roles=("teacher", "student", "critic"),
    )
''',
}

_COMPONENT = {
    PluginKind.reward: '''\
"""The ``$component`` reward: prefers images whose mean brightness is close to a target.

Replace the scoring with your own. The contract (``gdmd.interfaces.RewardModel``): images float
``[B, 3, H, W]`` in ``[0, 1]`` and ``B`` prompts in; a finite float Tensor ``[B]`` out, on the
images' device, each score independent of the rest of the batch; higher is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class $cls:
    """Scores ``-(mean brightness - target)^2``; differentiable."""

    #: Whether gradients flow from the score to the pixels (only the dmdr target needs them).
    differentiable = True

    def __init__(self, target: float, device: torch.device) -> None:
        self.target = target
        self.device = device

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"$component: {images.shape[0]} images but {len(prompts)} prompts")
        brightness = images.float().mean(dim=(1, 2, 3))
        return -((brightness - self.target) ** 2)
''',
    PluginKind.target: '''\
"""The ``$component`` target strategy: one DMD target per sample, with a fixed weight.

Replace it with your own. The contract (``gdmd.interfaces.TargetStrategy``): from a
``TargetContext`` return detached targets ``[B, K, ...]`` and weights ``[B, K]``, draw random
numbers only through ``ctx.sample_t``, ``ctx.sample_noise`` and ``ctx.generator``, and never
call ``backward`` (the training loop does).
"""

from __future__ import annotations

import torch
from gdmd.interfaces import TargetContext, TargetOutput
from gdmd.losses import dmd_gradient, implicit_target


class $cls:
    """``sg(x - g)`` with the normalised DMD gradient ``g``, weight ``weight``."""

    needs_rewards = False
    needs_differentiable_reward = False

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, ctx: TargetContext) -> TargetOutput:
        x = ctx.x.detach()
        t = ctx.sample_t(x.shape[0]).to(x.device)
        if ctx.sample_noise is not None:  # per-sample draws: the same on any number of processes
            noise = ctx.sample_noise(x.shape[0])
        else:
            noise = torch.randn(x.shape, generator=ctx.generator, device=ctx.generator.device)
        x_t = ctx.schedule.add_noise(x, noise.to(x), t)
        with torch.no_grad():
            real = ctx.real_x0(x_t, t, ctx.cond_real)
            fake = ctx.fake_x0(x_t, t, ctx.cond_fake, None)
        gradient = dmd_gradient(x, real, fake)
        targets = implicit_target(x, gradient).unsqueeze(1)
        weights = torch.full(targets.shape[:2], self.weight, device=x.device)
        metrics = {"$component/grad_abs": float(gradient.abs().mean())}
        return TargetOutput(targets=targets, weights=weights, metrics=metrics)
''',
    PluginKind.model: '''\
"""The ``$component`` model family: a small pixel-space flow-matching network.

Replace the network with your own. The contract (``gdmd.interfaces.DiffusionModel``): an
``nn.Module`` whose ``forward`` is ``predict_x0(x_t, t, cond, guidance_scale)``, returning
x0-predictions ``[B, *sample_shape]``; a noise schedule; a decoder to images in ``[0, 1]``;
prompts encoded to a dict of batch-first tensors; ``save_pretrained`` for checkpoints.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from gdmd.errors import GdmdError
from gdmd.schedules import FlowMatchingSchedule
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Prompt words kept; longer prompts are cut.
MAX_WORDS = 16


class ModelLoadError(GdmdError):
    """A saved model is missing or unreadable."""

    exit_code = 2


class PixelDecoder:
    """Pixels in ``[-1, 1]`` to images in ``[0, 1]``."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)


class $cls(nn.Module):
    """Velocity from ``x_t``, the time and a bag of hashed prompt words; ``forward`` returns
    the x0-prediction, with classifier-free guidance against the empty prompt."""

    def __init__(self, image_size: int, width: int, buckets: int) -> None:
        super().__init__()
        self.architecture = {"image_size": image_size, "width": width, "buckets": buckets}
        self.schedule = FlowMatchingSchedule()
        self.sample_shape: tuple[int, ...] = (3, image_size, image_size)
        self.decoder = PixelDecoder()
        # Bucket 0 is padding: the empty prompt embeds to zeros (the unconditional prompt).
        self.words = nn.EmbeddingBag(buckets + 1, width, mode="mean", padding_idx=0)
        self.time = nn.Linear(1, width)
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"words": LongTensor [B, MAX_WORDS]}``: each word hashed to a bucket, 0 pads."""
        buckets = self.architecture["buckets"]
        rows = []
        for prompt in prompts:
            ids = [zlib.crc32(word.encode()) % buckets + 1 for word in prompt.lower().split()]
            ids = ids[:MAX_WORDS]
            rows.append(ids + [0] * (MAX_WORDS - len(ids)))
        words = torch.tensor(rows, dtype=torch.long).reshape(len(prompts), MAX_WORDS)
        return {"words": words.to(self.inp.weight.device)}

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        embedding = self.words(words) + self.time(t.to(x_t.dtype)[:, None])
        hidden = nn.functional.silu(self.inp(x_t) + embedding[:, :, None, None])
        return self.out(hidden)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor],
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        x0 = self.schedule.to_x0(x_t, t, self.velocity(x_t, t, cond["words"]))
        if guidance_scale is None or guidance_scale == 1.0:
            return x0
        empty = torch.zeros_like(cond["words"])
        x0_uncond = self.schedule.to_x0(x_t, t, self.velocity(x_t, t, empty))
        return x0_uncond + guidance_scale * (x0 - x0_uncond)

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor],
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        # Through __call__, so hooks that wrap forward (accelerate's DDP) run.
        prediction: torch.Tensor = self(x_t, t, cond, guidance_scale)
        return prediction

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` (the architecture) and ``model.safetensors``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.architecture) + "\\n")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> $cls:
        """Load a model written by :meth:`save_pretrained`, on the CPU."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise ModelLoadError(
                f"$component: {directory} has no {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(write them with save_pretrained)"
            )
        model = cls(**json.loads((directory / CONFIG_FILE).read_text()))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model
''',
}

_TEST_HEADER = '''\
"""Tests of the $kind ``$component``: it keeps gdmd's $kind contract and does its job.

The fixtures (``gdmd_pm``, ``gdmd_build_context``, ...) come from gdmd's pytest plugin,
installed with gdmd.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from gdmd.interfaces import BuildContext
from gdmd.manager import GdmdPluginManager
from gdmd.testing import assert_${kind}_contract

import $module

ROOT = Path(__file__).resolve().parents[1]


def build(pm: GdmdPluginManager, ctx: BuildContext, **options: Any) -> Any:
    """The $kind as a recipe builds it, with ``options`` as its table's keys."""
    if pm.get_plugin("$component") is None:
        pm.register($module, name="$component")
    return pm.registries.by_kind("$kind").get("$component").build(options, ctx)


def test_keeps_the_${kind}_contract(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext
) -> None:
    assert_${kind}_contract(build(gdmd_pm, gdmd_build_context))


def test_the_plugin_module_imports_no_torch() -> None:
    # gdmd list-plugins imports every plugin module: it must stay cheap.
    code = (
        "import sys, $module; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
'''

_TEST = {
    PluginKind.reward: _TEST_HEADER
    + """

def test_images_closer_to_the_target_brightness_score_higher(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext, gdmd_prompts: list[str]
) -> None:
    reward = build(gdmd_pm, gdmd_build_context, target=0.25)
    images = torch.stack([torch.full((3, 8, 8), value) for value in (0.25, 0.5, 1.0)])
    scores = reward(images, gdmd_prompts)
    assert float(scores[0]) == 0.0
    assert bool(scores[0] > scores[1] > scores[2])
""",
    PluginKind.target: _TEST_HEADER
    + """

class Pixels:
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents + 1) / 2


def test_every_target_gets_the_configured_weight(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext
) -> None:
    from gdmd.interfaces import TargetContext
    from gdmd.schedules import FlowMatchingSchedule

    target = build(gdmd_pm, gdmd_build_context, weight=0.5)
    x = torch.zeros(2, 3, 4, 4)
    generator = torch.Generator().manual_seed(0)
    cond = {"tokens": torch.zeros(2, 1)}
    ctx = TargetContext(
        x=x,
        prompts=["a", "b"],
        cond_real=cond,
        cond_fake=cond,
        schedule=FlowMatchingSchedule(),
        real_x0=lambda x_t, t, c: 0.5 * x_t,
        fake_x0=lambda x_t, t, c, snapshot: 0.25 * x_t,
        num_critic_snapshots=0,
        sample_t=lambda n: torch.full((n,), 0.5),
        decoder=Pixels(),
        rewards=[],
        generator=generator,
        step=0,
    )
    out = target(ctx)
    assert out.targets.shape == (2, 1, 3, 4, 4)
    assert torch.equal(out.weights, torch.full((2, 1), 0.5))
""",
    PluginKind.model: _TEST_HEADER
    + """

def test_a_saved_model_loads_with_the_same_predictions(
    gdmd_pm: GdmdPluginManager, gdmd_build_context: BuildContext, tmp_path: Path
) -> None:
    model = build(gdmd_pm, gdmd_build_context).eval()
    model.save_pretrained(tmp_path / "saved")
    loaded = build(gdmd_pm, gdmd_build_context, model=str(tmp_path / "saved")).eval()
    x_t, t = torch.randn(2, *model.sample_shape), torch.tensor([0.3, 0.8])
    cond = model.encode_prompts(["a red circle", "two blue squares"])
    assert torch.equal(model.predict_x0(x_t, t, cond), loaded.predict_x0(x_t, t, cond))
""",
}
