"""Third-party plugins that are broken in the ways real ones break, and the check that gdmd
names each in a clear error while the rest of it keeps working.

Shared by ``tests/reliability/test_faulty_plugins.py`` and ``benchmarks/reliability.py
plugins`` (the counted figure in ``docs/reliability.md``). Each plugin is published the way a
third party publishes one, as an entry point of the group ``gdmd`` (faked here, so no package
is installed), under the name :data:`PLUGIN`.

A trial of a fault builds a fresh plugin manager with the faulty plugin beside the built-in
ones, then checks through the real command line (``make_app(pm)``):

1. ``gdmd list-plugins`` exits 0 and lists the built-in components, and the faulty plugin
   as failed when the fault shows at load time;
2. ``gdmd validate recipes/tiny_cpu.toml``, which does not use the plugin, exits 0;
3. a recipe that uses the plugin's reward (``validate`` for a load-time fault, ``run`` for a
   run-time one) exits non-zero with ``error:`` and a message naming the plugin and the
   fault, and no traceback.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import gdmd

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "recipes" / "tiny_cpu.toml"
#: The entry-point name of the faulty plugin; the second plugin of "registered twice".
PLUGIN = "gdmd-faulty"
OTHER_PLUGIN = "gdmd-faulty-too"
#: The reward the faulty plugin registers.
REWARD = "faulty-reward"


@dataclass
class _Dist:
    name: str
    version: str


@dataclass
class _EntryPoint:
    """Stands in for an ``importlib.metadata`` entry point of the group ``gdmd``."""

    name: str
    load: Callable[[], Any]
    value: str = "gdmd_faulty"

    @property
    def dist(self) -> _Dist:
        return _Dist(self.name, "0.1.0")


class _Reward:
    differentiable = True

    def __init__(self, score: Callable[[Any], Any]) -> None:
        self.score = score

    def __call__(self, images: Any, prompts: Any) -> Any:
        return self.score(images)


def _reward_plugin(score: Callable[[Any], Any] | None, factory_error: bool = False) -> Any:
    """A plugin registering :data:`REWARD`, whose model scores with ``score``."""

    def factory(config: Any, ctx: Any) -> Any:
        if factory_error:
            raise RuntimeError("weights file reward.bin not found")
        assert score is not None
        return _Reward(score)

    class Plugin:
        @gdmd.hookimpl
        def gdmd_register_rewards(self, register: Any) -> None:
            register(REWARD, factory, summary="A reward from a faulty plugin.")

    return Plugin()


def _import_error() -> Any:
    raise ModuleNotFoundError("No module named 'gdmd_faulty_backend'")


def _wrong_shape(images: Any) -> Any:
    return images.mean(dim=(2, 3))  # [B, 3], not [B]


def _nan(images: Any) -> Any:
    scores = images.mean(dim=(1, 2, 3))
    return scores * math.nan


def _wrong_device(images: Any) -> Any:
    import torch

    # "meta" stands in for a GPU on a CPU-only machine: a device the images are not on.
    return torch.zeros(images.shape[0], device="meta")


def _fine(images: Any) -> Any:
    return images.mean(dim=(1, 2, 3))


@dataclass(frozen=True)
class Fault:
    """One way a plugin breaks: its entry points, when it shows, and what the error says."""

    name: str
    entry_points: Callable[[], list[_EntryPoint]]
    #: "load": the plugin fails to load (listed as failed); "run": a run that uses it fails.
    shows_at: str
    #: Text the error must contain, beside the plugin's name.
    expect: str


FAULTS = [
    Fault(
        "raises on import",
        lambda: [_EntryPoint(PLUGIN, _import_error)],
        "load",
        "ModuleNotFoundError: No module named 'gdmd_faulty_backend'",
    ),
    Fault(
        "reward returns the wrong shape",
        lambda: [_EntryPoint(PLUGIN, lambda: _reward_plugin(_wrong_shape))],
        "run",
        "returned shape [4, 3] for 4 images, expected [4]",
    ),
    Fault(
        "reward returns NaN",
        lambda: [_EntryPoint(PLUGIN, lambda: _reward_plugin(_nan))],
        "run",
        "non-finite score",
    ),
    Fault(
        "reward returns a tensor on the wrong device",
        lambda: [_EntryPoint(PLUGIN, lambda: _reward_plugin(_wrong_device))],
        "run",
        "returned scores on meta, images were on cpu",
    ),
    Fault(
        "factory raises",
        lambda: [_EntryPoint(PLUGIN, lambda: _reward_plugin(None, factory_error=True))],
        "run",
        "failed to build: RuntimeError: weights file reward.bin not found",
    ),
    Fault(
        "reward registered twice",
        lambda: [
            _EntryPoint(PLUGIN, lambda: _reward_plugin(_fine)),
            _EntryPoint(OTHER_PLUGIN, lambda: _reward_plugin(_fine)),
        ],
        "load",
        f'reward "{REWARD}" is registered twice: by plugin "{PLUGIN}" and by plugin '
        f'"{OTHER_PLUGIN}"',
    ),
]


@contextlib.contextmanager
def installed(fault: Fault) -> Iterator[Any]:
    """A fresh plugin manager: the built-in plugins and ``fault``'s entry points."""
    from gdmd.manager import build_plugin_manager

    with mock.patch("gdmd.manager.entry_points", lambda group: fault.entry_points()):
        yield build_plugin_manager()


RUN_SETS = [
    "train.steps=1",
    "train.batch_size=2",
    "target.k=2",
    "train.critic_steps=1",
    'log.trackers=["jsonl"]',
    f"reward.brightness.kind={REWARD}",
]


def check_fault(fault: Fault, workdir: Path) -> list[str]:
    """Run one trial of ``fault``; return what did not hold (empty: every check held)."""
    from typer.testing import CliRunner

    from gdmd.cli import make_app

    problems: list[str] = []
    runner = CliRunner()
    env = {"COLUMNS": "10000", "HF_HUB_OFFLINE": "1"}

    def invoke(pm: Any, *args: str) -> tuple[int, str, BaseException | None]:
        result = runner.invoke(make_app(pm), list(args), env=env)
        exc = result.exception
        traceback = exc if exc is not None and not isinstance(exc, SystemExit) else None
        return result.exit_code, " ".join(result.output.split()), traceback

    with installed(fault) as pm:
        code, text, traceback = invoke(pm, "list-plugins")
        if code != 0 or traceback is not None or "tiny-unet" not in text:
            problems.append(f"list-plugins: exit {code}, {traceback!r}: {text[-300:]}")
        listed_failed = "plugins that failed to load" in text and PLUGIN in text
        if fault.shows_at == "load" and not listed_failed:
            problems.append(f"list-plugins does not show {PLUGIN} as failed: {text[-300:]}")
        if fault.shows_at == "load" and fault.expect not in text:
            problems.append(f"list-plugins does not say {fault.expect!r}: {text[-300:]}")

        code, text, traceback = invoke(pm, "validate", str(TINY_RECIPE))
        if code != 0 or traceback is not None:
            problems.append(f"a recipe without the plugin: exit {code}, {traceback!r}: {text}")

        sets = [*RUN_SETS, f"run.output_dir={workdir}", "run.name=faulty"]
        twice = fault.name == "reward registered twice"
        command = "validate" if fault.shows_at == "load" and not twice else "run"
        code, text, traceback = invoke(pm, command, str(TINY_RECIPE), *(f"--set={s}" for s in sets))
        if twice:
            # The first plugin's reward stays usable; the second is the failed one.
            if code != 0 or traceback is not None:
                problems.append(f"the first plugin's reward: exit {code}, {traceback!r}: {text}")
        elif code == 0 or traceback is not None or "error:" not in text:
            problems.append(f"{command} with the plugin: exit {code}, {traceback!r}: {text[-400:]}")
        elif PLUGIN not in text or (fault.shows_at == "run" and fault.expect not in text):
            problems.append(f"the error names neither {PLUGIN} nor the fault: {text[-400:]}")
    return problems
