"""Registries and the plugin manager: names, messages, attribution, failures."""

from __future__ import annotations

from typing import Any

import pytest

import gdmd
from gdmd.config import ComponentConfig, EmptyConfig
from gdmd.errors import RegistryError, UnknownComponentError
from gdmd.manager import DEFAULT_PLUGINS, build_plugin_manager
from gdmd.recipe.tables import CriticHead, RewardHead, StudentHead, TargetHead, TeacherHead
from gdmd.registry import RESERVED_CONFIG_KEYS, ComponentSpec, Registries, Registry

from .conftest import ClipConfig, Dist, FakeEntryPoint, FakePlugin


def _spec(kind: Any, name: str, plugin: str = "p", **kw: Any) -> ComponentSpec:
    return ComponentSpec(kind=kind, name=name, factory=lambda c, ctx: (c, ctx), plugin=plugin, **kw)


def test_duplicate_name_names_both_plugins() -> None:
    registry = Registry("reward")
    registry.add(_spec("reward", "clip", plugin="gdmd-foo"))
    with pytest.raises(RegistryError) as info:
        registry.add(_spec("reward", "clip", plugin="gdmd-bar"))
    assert str(info.value) == (
        'reward "clip" is registered twice: by plugin "gdmd-foo" and by plugin "gdmd-bar"'
    )


def test_unknown_name_lists_known_names_and_suggests() -> None:
    registry = Registry("reward")
    for name in ("toy-checker", "hpsv2", "clip"):
        registry.add(_spec("reward", name))
    with pytest.raises(UnknownComponentError) as info:
        registry.get("hpsv3")
    assert str(info.value) == (
        'unknown reward "hpsv3"; did you mean "hpsv2"? Known rewards: clip, hpsv2, toy-checker'
    )
    with pytest.raises(UnknownComponentError) as info:
        registry.get("zzz")
    assert str(info.value) == 'unknown reward "zzz". Known rewards: clip, hpsv2, toy-checker'
    assert info.value.exit_code == 2


def test_empty_registry_message() -> None:
    with pytest.raises(UnknownComponentError, match=r"Known prompt sources: \(none registered\)"):
        Registry("prompts").get("list")


def test_registry_access() -> None:
    registries = Registries()
    registries.add(_spec("target", "gdmd"))
    registries.add(_spec("target", "dmd"))
    registries.add(_spec("model", "unet", roles=("teacher",)))
    assert registries.by_kind("target") is registries.targets
    assert registries.targets.names() == ["dmd", "gdmd"]
    assert [spec.name for spec in registries.targets] == ["dmd", "gdmd"]
    assert "dmd" in registries.targets and "unet" not in registries.targets
    assert len(registries.targets) == 2
    assert [spec.name for spec in registries] == ["unet", "dmd", "gdmd"]
    assert registries.get("model", "unet").roles == ("teacher",)
    with pytest.raises(ValueError):
        registries.by_kind("sampler")


def test_spec_defaults_and_build() -> None:
    spec = _spec("reward", "clip", config=ClipConfig)
    assert _spec("reward", "x").config is EmptyConfig
    config, ctx = spec.build({"scale": 2.0}, "ctx")
    assert config == ClipConfig(scale=2.0) and ctx == "ctx"
    assert spec.build(None, "ctx")[0] == ClipConfig()
    assert spec.build(ClipConfig(scale=3.0), None)[0].scale == 3.0
    with pytest.raises(RegistryError, match="needs a ClipConfig config, got EmptyConfig"):
        spec.build(EmptyConfig(), None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "has space"}, "is not valid"),
        ({"name": ""}, "is not valid"),
        ({"factory": 3}, "factory must be callable"),
        ({"config": dict}, "must be a subclass of gdmd.config.ComponentConfig"),
        ({"roles": ("teacher",)}, "only models have roles"),
    ],
)
def test_malformed_registrations(kwargs: dict[str, Any], message: str) -> None:
    fields = {"kind": "reward", "name": "ok", "factory": lambda c, ctx: None, **kwargs}
    with pytest.raises(RegistryError, match=message):
        ComponentSpec(**fields)


def test_model_roles_are_checked() -> None:
    with pytest.raises(RegistryError, match=r"roles must be a non-empty subset.*\['judge'\]"):
        _spec("model", "m", roles=("judge",))
    with pytest.raises(RegistryError, match="roles must be a non-empty subset"):
        _spec("model", "m", roles=())


def test_config_may_not_use_the_tables_own_keys() -> None:
    class Clashing(ComponentConfig):
        weight: float = 1.0

    with pytest.raises(RegistryError, match="declares 'weight', which the recipe table"):
        _spec("reward", "r", config=Clashing)


def test_reserved_keys_match_the_recipe_tables() -> None:
    def keys(*heads: Any) -> set[str]:
        return {name for head in heads for name in head.model_fields}

    assert RESERVED_CONFIG_KEYS["model"] == keys(TeacherHead, StudentHead, CriticHead)
    assert RESERVED_CONFIG_KEYS["reward"] == keys(RewardHead)
    assert RESERVED_CONFIG_KEYS["target"] == keys(TargetHead)


# -- the plugin manager ---------------------------------------------------------------------


def test_inline_plugin_registers_through_hooks(fake_pm: Any) -> None:
    clip = fake_pm.registries.rewards.get("clip")
    assert (clip.plugin, clip.distribution, clip.version) == ("fake-plugin", None, None)
    assert clip.config is ClipConfig and clip.summary == "Fake CLIP score."
    assert fake_pm.registries.models.get("fake-unet").roles == ("teacher", "student", "critic")
    assert fake_pm.registries.models.get("teacher-only").roles == ("teacher",)
    listing = fake_pm.registries.prompts.get("list")
    assert (listing.plugin, listing.distribution) == ("gdmd.builtins.prompts", "gdmd")
    assert fake_pm.registries.targets.names() == ["dmd", "gdmd"]


def test_registries_follow_register_and_unregister(fake_pm: Any) -> None:
    class Extra:
        @gdmd.hookimpl
        def gdmd_register_rewards(self, register: Any) -> None:
            register("aesthetic", lambda c, ctx: None)

    plugin = Extra()
    fake_pm.register(plugin)
    assert "aesthetic" in fake_pm.registries.rewards
    assert fake_pm.registries.rewards.get("aesthetic").plugin == "Extra"
    fake_pm.unregister(plugin)
    assert "aesthetic" not in fake_pm.registries.rewards


def test_duplicate_between_plugins_in_code_raises(fake_pm: Any) -> None:
    fake_pm.register(FakePlugin(), name="second")
    with pytest.raises(RegistryError) as info:
        fake_pm.registries  # noqa: B018
    assert str(info.value).startswith(
        'model "fake-unet" is registered twice: by plugin "fake-plugin" and by plugin "second"'
    )


def test_bad_register_arguments_raise_at_build() -> None:
    class Bad:
        @gdmd.hookimpl
        def gdmd_register_models(self, register: Any) -> None:
            register("m", lambda c, ctx: None, roles="painter")

    pm = build_plugin_manager(load_entrypoints=False, builtins=[])
    pm.register(Bad(), name="bad")
    with pytest.raises(RegistryError, match=r'model "m" \(plugin "bad"\): roles must be'):
        pm.registries  # noqa: B018


def test_unknown_hook_is_rejected() -> None:
    class Typo:
        @gdmd.hookimpl
        def gdmd_register_reward(self, register: Any) -> None:
            """Missing the final s."""

    pm = build_plugin_manager(load_entrypoints=False, builtins=[])
    with pytest.raises(
        RegistryError, match=r'"typo" implements unknown hook\(s\) gdmd_register_rew'
    ):
        pm.register(Typo(), name="typo")
    assert pm.get_plugin("typo") is None


def test_default_manager_builds_without_entry_points() -> None:
    pm = build_plugin_manager(load_entrypoints=False)
    names = [name for name, _ in pm.list_name_plugin()]
    assert names == DEFAULT_PLUGINS
    assert {"list", "text-file"} <= set(pm.registries.prompts.names())
    assert pm.failures == []
    assert all(info.distribution == "gdmd" for info in pm.plugin_versions())


def test_importing_the_manager_loads_nothing() -> None:
    import gdmd.manager as manager

    assert not hasattr(manager, "pm") and not hasattr(manager, "registries")


# -- entry points (simulated; tests/foundation/test_distributions.py installs real ones) ----


def _with_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint) -> None:
    monkeypatch.setattr("gdmd.manager.entry_points", lambda group: list(eps))


class DuplicateList:
    @gdmd.hookimpl
    def gdmd_register_prompts(self, register: Any) -> None:
        register("list", lambda c, ctx: None)


class GoodReward:
    @gdmd.hookimpl
    def gdmd_register_rewards(self, register: Any) -> None:
        register("good", lambda c, ctx: None, summary="fine")


class RaisingHook:
    @gdmd.hookimpl
    def gdmd_register_targets(self, register: Any) -> None:
        raise KeyError("missing weights")


def test_entry_point_plugins_are_attributed_and_failures_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _with_entry_points(
        monkeypatch,
        FakeEntryPoint("good", GoodReward(), Dist("gdmd-good", "1.2.0")),
        FakeEntryPoint("dup", DuplicateList(), Dist("gdmd-dup", "0.1")),
        FakeEntryPoint(
            "noimport",
            ModuleNotFoundError("No module named 'open_clip'"),
            Dist("gdmd-noimport", "2.0"),
        ),
        FakeEntryPoint("raising", RaisingHook(), Dist("gdmd-raising", "3.0")),
    )
    pm = build_plugin_manager(builtins=["gdmd.builtins.prompts"])
    good = pm.registries.rewards.get("good")
    assert (good.plugin, good.distribution, good.version) == ("good", "gdmd-good", "1.2.0")
    assert pm.registries.prompts.get("list").plugin == "gdmd.builtins.prompts"
    failures = {f.plugin: f for f in pm.failures}
    assert set(failures) == {"dup", "noimport", "raising"}
    assert failures["dup"].error == (
        'prompt source "list" is registered twice: '
        'by plugin "gdmd.builtins.prompts" and by plugin "dup"'
    )
    assert (failures["dup"].distribution, failures["dup"].version) == ("gdmd-dup", "0.1")
    assert failures["noimport"].error == "ModuleNotFoundError: No module named 'open_clip'"
    assert failures["raising"].error == "KeyError: 'missing weights'"
    # A failed plugin is gone entirely, so its other hooks never run.
    assert pm.get_plugin("dup") is None and pm.get_plugin("raising") is None
    assert [info.plugin for info in pm.plugin_versions()] == ["gdmd.builtins.prompts", "good"]


def test_unknown_component_names_failed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_points(
        monkeypatch,
        FakeEntryPoint("hps", ImportError("cannot import name 'HPSv2'"), Dist("gdmd-hps", "1.0")),
    )
    pm = build_plugin_manager(builtins=["gdmd.builtins.prompts"])
    assert pm.require_component("prompts", "list").name == "list"
    with pytest.raises(UnknownComponentError) as info:
        pm.require_component("reward", "hpsv2")
    assert str(info.value) == (
        'unknown reward "hpsv2". Known rewards: (none registered)\n'
        "It may come from a plugin that failed to load:\n"
        "  plugin \"hps\" (gdmd-hps 1.0): ImportError: cannot import name 'HPSv2'"
    )


def test_disable_plugins_env(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_points(
        monkeypatch,
        FakeEntryPoint("good", GoodReward(), Dist("gdmd-good", "1.2.0")),
        FakeEntryPoint("broken", RuntimeError("boom")),
    )
    monkeypatch.setenv("GDMD_DISABLE_PLUGINS", " broken , other")
    pm = build_plugin_manager(builtins=[])
    assert pm.failures == [] and pm.disabled == ["broken"]
    assert pm.registries.rewards.names() == ["good"]
    monkeypatch.setenv("GDMD_DISABLE_PLUGINS", "good,broken")
    pm = build_plugin_manager(builtins=[])
    assert pm.registries.rewards.names() == [] and sorted(pm.disabled) == ["broken", "good"]


def test_pytest_plugin_fixtures(gdmd_pm: Any, gdmd_registries: Any) -> None:
    """The fixtures of gdmd's pytest plugin (registered by the pytest11 entry point)."""
    assert gdmd_registries is gdmd_pm.registries
    assert {"list", "text-file"} <= set(gdmd_registries.prompts.names())
    assert gdmd_pm.failures == []
