"""Plugin API versions: a plugin written for another API is refused with both versions named.

A refused plugin is listed as a failure by ``gdmd list-plugins`` (the CLI keeps working), and
a recipe that names one of its components fails with the same message, exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import gdmd
from gdmd.cli import make_app
from gdmd.errors import IncompatiblePluginError
from gdmd.manager import GdmdPluginManager, build_plugin_manager

VERSION = gdmd.PLUGIN_API_VERSION
PROVIDED = f"gdmd {gdmd.__version__} provides plugin API {VERSION}"

RECIPE = """\
[run]
name = "api"

[teacher]
kind = "tiny-unet"
image_size = 8
channels = [8, 16]
text_width = 16
text_layers = 1
heads = 2

[reward.score]
kind = "future-score"

[target]
kind = "gdmd"

[prompts]
kind = "list"
prompts = ["a red circle"]
"""


class FutureReward:
    """Written for the next plugin API."""

    GDMD_PLUGIN_API = VERSION + 1

    @gdmd.hookimpl
    def gdmd_register_rewards(self, register: Any) -> None:
        register("future-score", lambda config, ctx: None)


class RemovedHook:
    """Implements a hook this gdmd does not have (one a later or earlier API has)."""

    GDMD_PLUGIN_API = VERSION

    @gdmd.hookimpl
    def gdmd_register_schedulers(self, register: Any) -> None:
        register("cosine", lambda config, ctx: None)

    @gdmd.hookimpl
    def gdmd_register_rewards(self, register: Any) -> None:
        register("future-score", lambda config, ctx: None)


class Current:
    GDMD_PLUGIN_API = VERSION

    @gdmd.hookimpl
    def gdmd_register_rewards(self, register: Any) -> None:
        register("future-score", lambda config, ctx: None, summary="fits")


@dataclass
class Dist:
    name: str
    version: str


@dataclass
class EntryPoint:
    name: str
    plugin: Any
    dist: Dist
    value: str = "module"

    def load(self) -> Any:
        return self.plugin


def manager_with(monkeypatch: pytest.MonkeyPatch, plugin: Any) -> GdmdPluginManager:
    entry_point = EntryPoint("future", plugin, Dist("gdmd-future", "2.0.0"))
    monkeypatch.setattr("gdmd.manager.entry_points", lambda group: [entry_point])
    return build_plugin_manager()


def invoke(pm: GdmdPluginManager, *args: str) -> Any:
    return CliRunner().invoke(make_app(pm), list(args), env={"COLUMNS": "400"})


def test_plugin_api_version_is_an_int_and_gdmd_imports_no_torch() -> None:
    code = (
        "import sys, gdmd; assert isinstance(gdmd.PLUGIN_API_VERSION, int); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
    assert gdmd.PLUGIN_API_VERSION >= 1


def test_a_plugin_written_for_the_current_api_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = manager_with(monkeypatch, Current())
    assert pm.failures == []
    assert pm.registries.rewards.get("future-score").summary == "fits"


def test_a_plugin_for_a_newer_api_is_a_failure_naming_both_versions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pm = manager_with(monkeypatch, FutureReward())
    expected = (
        f'plugin "future" was written for gdmd plugin API {VERSION + 1}, but the installed '
        f"{PROVIDED}; upgrade gdmd, or use a release of the plugin written for plugin API "
        f"{VERSION}"
    )
    assert [(f.plugin, f.distribution, f.error) for f in pm.failures] == [
        ("future", "gdmd-future", expected)
    ]
    assert pm.get_plugin("future") is None
    assert "future-score" not in pm.registries.rewards

    listing = invoke(pm, "list-plugins", "--json")
    assert listing.exit_code == 0
    assert json.loads(listing.stdout)["failures"] == [
        {"plugin": "future", "distribution": "gdmd-future", "version": "2.0.0", "error": expected}
    ]
    table = invoke(pm, "list-plugins")
    assert table.exit_code == 0 and "plugins that failed to load" in table.stdout
    assert f"future (gdmd-future 2.0.0): {expected}" in table.stdout

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    for command in ("validate", "run"):
        result = invoke(pm, command, str(recipe))
        assert result.exit_code == 2, result.output
        assert (
            '[reward.score] kind: reward "future-score" comes from a plugin gdmd cannot load: '
            f'plugin "future" (gdmd-future 2.0.0): {expected}'
        ) in result.stderr
        assert "Traceback" not in result.output


def test_a_plugin_with_an_unknown_hook_is_a_failure_naming_the_hook_and_versions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pm = manager_with(monkeypatch, RemovedHook())
    (failure,) = pm.failures
    assert failure.error.startswith(
        'plugin "future" implements unknown hook(s) gdmd_register_schedulers: gdmd '
        f"{gdmd.__version__} (plugin API {VERSION}) has no such hook, and the plugin was "
        f"written for plugin API {VERSION}. gdmd's hooks are gdmd_register_commands, "
    )
    # Refused as a whole: the hooks gdmd does have never ran either.
    assert "future-score" not in pm.registries.rewards
    assert invoke(pm, "list-plugins").exit_code == 0

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    result = invoke(pm, "validate", str(recipe))
    assert result.exit_code == 2
    assert 'reward "future-score" comes from a plugin gdmd cannot load' in result.stderr
    assert "has no such hook" in result.stderr


def test_a_misspelt_hook_gets_a_suggestion() -> None:
    class Typo:
        @gdmd.hookimpl
        def gdmd_register_reward(self, register: Any) -> None:
            register("x", lambda config, ctx: None)

    pm = build_plugin_manager(load_entrypoints=False, builtins=[])
    with pytest.raises(IncompatiblePluginError) as caught:
        pm.register(Typo(), name="typo")
    message = str(caught.value)
    assert "the plugin declares no plugin API version (GDMD_PLUGIN_API)" in message
    assert 'Did you mean "gdmd_register_rewards"?' in message


def test_a_hook_with_arguments_gdmd_does_not_pass_is_incompatible() -> None:
    class OtherSignature:
        GDMD_PLUGIN_API = VERSION

        @gdmd.hookimpl
        def gdmd_register_rewards(self, register: Any, device: Any) -> None:
            """A hook shaped for another plugin API."""

    pm = build_plugin_manager(load_entrypoints=False, builtins=[])
    with pytest.raises(IncompatiblePluginError) as caught:
        pm.register(OtherSignature(), name="other")
    assert str(caught.value).startswith(
        f'plugin "other" does not fit gdmd\'s hooks (the plugin was written for plugin API '
        f"{VERSION}): "
    )
    assert "device" in str(caught.value)


@pytest.mark.parametrize("declared", ["1", 1.0, True])
def test_a_version_that_is_not_an_int_is_refused(declared: object) -> None:
    plugin = type("Odd", (), {"GDMD_PLUGIN_API": declared})()
    pm = build_plugin_manager(load_entrypoints=False, builtins=[])
    with pytest.raises(IncompatiblePluginError) as caught:
        pm.register(plugin, name="odd")
    assert str(caught.value) == (
        f'plugin "odd" sets GDMD_PLUGIN_API = {declared!r}, which is not a plugin API version '
        f"(an int); {PROVIDED}"
    )


def test_a_version_older_than_gdmd_supports_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gdmd.manager.PLUGIN_API_VERSION", 3)
    monkeypatch.setattr("gdmd.manager.OLDEST_PLUGIN_API_VERSION", 2)
    plugin = type("Old", (), {"GDMD_PLUGIN_API": 1})()
    pm = build_plugin_manager(load_entrypoints=False, builtins=[])
    with pytest.raises(IncompatiblePluginError) as caught:
        pm.register(plugin, name="old")
    assert str(caught.value) == (
        f'plugin "old" was written for gdmd plugin API 1, which the installed gdmd '
        f"{gdmd.__version__} no longer supports (it loads plugin API 2 to 3); upgrade the plugin"
    )
