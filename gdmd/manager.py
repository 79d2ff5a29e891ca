"""Loading plugins: the built-in ones, then every entry point of the group ``gdmd``.

Loading is explicit, never an import side effect::

    pm = build_plugin_manager()          # built-ins + installed plugin distributions
    spec = pm.require_component("reward", "clip")

A plugin that fails to import or register is recorded in ``pm.failures`` (and shown by
``gdmd list-plugins``); it is fatal only to a recipe that names one of its components. Set
``GDMD_DISABLE_PLUGINS=name1,name2`` to skip entry points by name.

A plugin module may declare the plugin API it was written for, ``GDMD_PLUGIN_API = 1`` (see
:data:`gdmd.PLUGIN_API_VERSION`). A plugin that declares a version this gdmd does not
provide, or implements a hook this gdmd does not have, is refused with a message naming both
versions, as an :class:`~gdmd.errors.IncompatiblePluginError`, before any of its hooks run.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import pluggy

from gdmd import PLUGIN_API_VERSION, __version__, hookspecs
from gdmd.config import ComponentConfig, EmptyConfig
from gdmd.errors import IncompatiblePluginError, RegistryError, UnknownComponentError
from gdmd.registry import (
    KINDS,
    MODEL_ROLES,
    ComponentFactory,
    ComponentKind,
    ComponentSpec,
    Register,
    Registries,
    did_you_mean,
    kind_label,
)

if TYPE_CHECKING:
    import typer

#: Modules registered before any entry point, in this order.
DEFAULT_PLUGINS = [
    "gdmd.builtins.models",
    "gdmd.builtins.rewards",
    "gdmd.builtins.targets",
    "gdmd.builtins.prompts",
]

#: The entry-point group third-party plugin distributions publish their plugin under.
ENTRY_POINT_GROUP = "gdmd"

#: Comma-separated entry-point names to skip.
DISABLE_ENV = "GDMD_DISABLE_PLUGINS"

#: The plugin-module attribute that declares the plugin API a plugin was written for.
PLUGIN_API_ATTRIBUTE = "GDMD_PLUGIN_API"

#: The oldest plugin API this gdmd still loads; raised when a hook is removed or changes.
OLDEST_PLUGIN_API_VERSION = 1

_REGISTER_HOOKS: dict[ComponentKind, str] = {
    "model": "gdmd_register_models",
    "reward": "gdmd_register_rewards",
    "target": "gdmd_register_targets",
    "prompts": "gdmd_register_prompts",
}


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to import or register; its components are missing."""

    plugin: str
    distribution: str | None
    version: str | None
    error: str
    #: ``(kind, name)`` of components the plugin would have registered, when known (for an
    #: incompatible plugin), so a recipe that names one is told which plugin it needs.
    components: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """``plugin "x" (gdmd-x 1.0): RuntimeError: ...``."""
        origin = " ".join(part for part in (self.distribution, self.version) if part)
        return f'plugin "{self.plugin}"' + (f" ({origin})" if origin else "") + f": {self.error}"


class PluginInfo(NamedTuple):
    """A loaded plugin and the distribution it came from (``None`` for one registered in
    code), as written to a run's ``plugins.lock``."""

    plugin: str
    distribution: str | None
    version: str | None


@dataclass(frozen=True)
class _Origin:
    source: Literal["builtin", "entrypoint", "code"]
    distribution: str | None = None
    version: str | None = None


_IN_CODE = _Origin("code")


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class GdmdPluginManager(pluggy.PluginManager):
    """A pluggy plugin manager for the ``gdmd`` hooks that also builds the registries.

    ``registries`` is (re)built from the registered plugins on first use after any
    :meth:`register`/:meth:`unregister`, so tests can add a plugin object and see its
    components. ``failures`` lists plugins that could not be loaded.
    """

    def __init__(self) -> None:
        super().__init__("gdmd")
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        #: Entry-point names skipped because of ``GDMD_DISABLE_PLUGINS``.
        self.disabled: list[str] = []
        self._origins: dict[str, _Origin] = {}
        self._registries: Registries | None = None

    # -- registration ---------------------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register a plugin object in code (tests, notebooks); see pluggy's ``register``."""
        return self._register(plugin, name, _IN_CODE)

    def _register(self, plugin: Any, name: str | None, origin: _Origin) -> str | None:
        if name is None and not hasattr(plugin, "__name__"):
            # pluggy would name an instance by its id(); the class name reads better.
            name = type(plugin).__name__
        label = name or self.get_canonical_name(plugin)
        declared = _declared_api(plugin, label)
        try:
            registered = super().register(plugin, name)
        except pluggy.PluginValidationError as exc:
            # A hook whose arguments gdmd does not pass: written for another plugin API.
            raise IncompatiblePluginError(
                f'plugin "{label}" does not fit gdmd\'s hooks ({_written_for(declared)}): {exc}',
                _declared_components(plugin),
            ) from None
        if registered is None:
            return None
        unknown = sorted(
            caller.name for caller in self.get_hookcallers(plugin) or [] if not caller.has_spec()
        )
        if unknown:
            super().unregister(plugin)
            raise IncompatiblePluginError(
                self._unknown_hooks_message(registered, unknown, declared),
                _declared_components(plugin),
            )
        self._origins[registered] = origin
        self._registries = None
        return registered

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        """Unregister a plugin by object or name; the registries are rebuilt on next use."""
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        removed = super().unregister(plugin=plugin, name=name)
        if name is not None:
            self._origins.pop(name, None)
        self._registries = None
        return removed

    def load_entrypoint_plugins(self) -> None:
        """Register every entry point of the group ``gdmd`` not named in
        ``GDMD_DISABLE_PLUGINS``; one that fails to import or register becomes a failure."""
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        seen: set[tuple[str, str, str | None]] = set()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
            dist = getattr(ep, "dist", None)
            origin = _Origin(
                "entrypoint",
                dist.name if dist is not None else None,
                dist.version if dist is not None else None,
            )
            key = (ep.name, ep.value, origin.distribution)
            if key in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(key)
            if ep.name in disabled:
                self.disabled.append(ep.name)
                continue
            try:
                self._register(ep.load(), ep.name, origin)
            except (Exception, SystemExit) as exc:
                self._record_failure(ep.name, origin, exc)

    def _record_failure(self, plugin: str, origin: _Origin, exc: BaseException) -> PluginFailure:
        message = str(exc) if isinstance(exc, RegistryError) else _error_text(exc)
        components = exc.components if isinstance(exc, IncompatiblePluginError) else ()
        failure = PluginFailure(plugin, origin.distribution, origin.version, message, components)
        self.failures.append(failure)
        return failure

    def _hook_names(self) -> list[str]:
        return sorted(name for name in dir(hookspecs) if name.startswith("gdmd_"))

    def _unknown_hooks_message(self, plugin: str, unknown: list[str], declared: int | None) -> str:
        hooks = self._hook_names()
        message = (
            f'plugin "{plugin}" implements unknown hook(s) {", ".join(unknown)}: gdmd '
            f"{__version__} (plugin API {PLUGIN_API_VERSION}) has no such hook, and "
            f"{_written_for(declared)}."
        )
        suggestion = None
        if len(unknown) == 1:
            # Compared without the prefix every hook shares, which would make any two close.
            prefix = "gdmd_register_"
            tails = {hook.removeprefix(prefix): hook for hook in hooks}
            close = did_you_mean(unknown[0].removeprefix(prefix), list(tails))
            suggestion = tails[close] if close else None
        if suggestion:
            message += f' Did you mean "{suggestion}"?'
        return message + f" gdmd's hooks are {', '.join(hooks)}"

    # -- registries -----------------------------------------------------------------------

    @property
    def registries(self) -> Registries:
        """The component registries built from every registered plugin."""
        if self._registries is None:
            self._registries = self._build_registries()
        return self._registries

    def _build_registries(self) -> Registries:
        registries = Registries()
        dropped: list[Any] = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:  # a blocked name
                continue
            origin = self._origins.get(name, _IN_CODE)
            try:
                specs = self._collect_specs(name, plugin, origin)
                conflicts = _conflicts(registries, specs)
                if conflicts:
                    raise RegistryError("; ".join(conflicts))
            except Exception as exc:
                if origin.source == "entrypoint":
                    # One bad third-party plugin must not brick the CLI.
                    self._record_failure(name, origin, exc)
                    dropped.append(plugin)
                    continue
                if isinstance(exc, RegistryError):
                    raise
                raise RegistryError(
                    f'plugin "{name}" failed to register its components: {_error_text(exc)}'
                ) from exc
            for spec in specs:
                registries.add(spec)
        for plugin in dropped:
            self.unregister(plugin)
        return registries

    def _collect_specs(self, name: str, plugin: Any, origin: _Origin) -> list[ComponentSpec]:
        specs: list[ComponentSpec] = []
        for kind in KINDS:
            hook = getattr(self.hook, _REGISTER_HOOKS[kind])
            for impl in hook.get_hookimpls():
                if impl.plugin is not plugin or impl.hookwrapper or impl.wrapper:
                    continue
                register = _bound_register(kind, name, origin, specs.append)
                impl.function(*[{"register": register}[arg] for arg in impl.argnames])
        return specs

    def require_component(self, kind: str, name: str) -> ComponentSpec:
        """The component ``name`` of ``kind``; an unknown name raises
        :class:`UnknownComponentError` that also names every plugin that failed to load."""
        try:
            return self.registries.get(kind, name)
        except UnknownComponentError as exc:
            if not self.failures:
                raise
            for failure in self.failures:
                if (kind, name) in failure.components:
                    raise UnknownComponentError(
                        f'{kind_label(kind)} "{name}" comes from a plugin gdmd cannot load: '
                        f"{failure.describe()}"
                    ) from None
            lines = [str(exc), "It may come from a plugin that failed to load:"]
            lines += [f"  {failure.describe()}" for failure in self.failures]
            raise UnknownComponentError("\n".join(lines)) from None

    def plugin_versions(self) -> list[PluginInfo]:
        """Every registered plugin with its distribution and version, in load order."""
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is not None:
                origin = self._origins.get(name, _IN_CODE)
                infos.append(PluginInfo(name, origin.distribution, origin.version))
        return infos

    # -- commands -------------------------------------------------------------------------

    def register_commands(self, app: typer.Typer) -> list[PluginFailure]:
        """Let every plugin add its commands to ``app``.

        A third-party plugin whose hook raises is recorded and returned as a failure; a
        built-in one raises :class:`RegistryError`.
        """
        failures = []
        for impl in self.hook.gdmd_register_commands.get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                continue
            origin = self._origins.get(impl.plugin_name, _IN_CODE)
            try:
                impl.function(*[{"app": app}[arg] for arg in impl.argnames])
            except Exception as exc:
                if origin.source != "entrypoint":
                    raise RegistryError(
                        f'plugin "{impl.plugin_name}" failed to add its commands: '
                        f"{_error_text(exc)}"
                    ) from exc
                failures.append(self._record_failure(impl.plugin_name, origin, exc))
        return failures


def _bound_register(
    kind: ComponentKind, plugin: str, origin: _Origin, sink: Callable[[ComponentSpec], None]
) -> Register:
    """A ``register`` callable that attributes what it registers to ``plugin``."""

    def register(
        name: str,
        factory: ComponentFactory,
        *,
        config: type[ComponentConfig] | None = None,
        summary: str = "",
        roles: Sequence[str] = MODEL_ROLES,
    ) -> None:
        if isinstance(roles, str):
            roles = (roles,)
        sink(
            ComponentSpec(
                kind=kind,
                name=name,
                factory=factory,
                config=EmptyConfig if config is None else config,
                summary=summary,
                plugin=plugin,
                distribution=origin.distribution,
                version=origin.version,
                roles=tuple(roles) if kind == "model" else (),
            )
        )

    return register


def _declared_api(plugin: Any, label: str) -> int | None:
    """The plugin's ``GDMD_PLUGIN_API`` (``None`` when it declares none, read as the current
    version); a version this gdmd does not provide raises :class:`IncompatiblePluginError`."""
    declared = getattr(plugin, PLUGIN_API_ATTRIBUTE, None)
    if declared is None:
        return None
    provided = f"gdmd {__version__} provides plugin API {PLUGIN_API_VERSION}"
    if not isinstance(declared, int) or isinstance(declared, bool):
        raise IncompatiblePluginError(
            f'plugin "{label}" sets {PLUGIN_API_ATTRIBUTE} = {declared!r}, which is not a '
            f"plugin API version (an int); {provided}"
        )
    if declared > PLUGIN_API_VERSION:
        raise IncompatiblePluginError(
            f'plugin "{label}" was written for gdmd plugin API {declared}, but the installed '
            f"{provided}; upgrade gdmd, or use a release of the plugin written for plugin API "
            f"{PLUGIN_API_VERSION}",
            _declared_components(plugin),
        )
    if declared < OLDEST_PLUGIN_API_VERSION:
        raise IncompatiblePluginError(
            f'plugin "{label}" was written for gdmd plugin API {declared}, which the installed '
            f"gdmd {__version__} no longer supports (it loads plugin API "
            f"{OLDEST_PLUGIN_API_VERSION} to {PLUGIN_API_VERSION}); upgrade the plugin",
            _declared_components(plugin),
        )
    return declared


def _written_for(declared: int | None) -> str:
    if declared is None:
        return f"the plugin declares no plugin API version ({PLUGIN_API_ATTRIBUTE})"
    return f"the plugin was written for plugin API {declared}"


def _declared_components(plugin: Any) -> tuple[tuple[str, str], ...]:
    """What a refused plugin's register hooks would register, as ``(kind, name)``.

    Best effort, only to tell a recipe that names one of them which plugin it needs: a hook
    that takes other arguments or raises is skipped, and nothing is registered.
    """
    found: list[tuple[str, str]] = []
    for kind, hook_name in _REGISTER_HOOKS.items():
        function = getattr(plugin, hook_name, None)
        if not callable(function) or not hasattr(function, "gdmd_impl"):
            continue

        def record(name: Any, *args: Any, _kind: str = kind, **kwargs: Any) -> None:
            if isinstance(name, str):
                found.append((_kind, name))

        try:
            if list(inspect.signature(function).parameters) == ["register"]:
                function(register=record)
        except Exception:  # a refused plugin's hooks may fail in any way
            continue
    return tuple(found)


def _conflicts(registries: Registries, specs: list[ComponentSpec]) -> list[str]:
    """Why ``specs`` cannot join ``registries``: names taken already or registered twice."""
    messages = []
    pending: dict[tuple[str, str], ComponentSpec] = {}
    for spec in specs:
        message = registries.by_kind(spec.kind).duplicate_message(spec)
        if message is None and (spec.kind, spec.name) in pending:
            message = (
                f'{kind_label(spec.kind)} "{spec.name}" is registered twice: '
                f'by plugin "{spec.plugin}" and by plugin "{spec.plugin}"'
            )
        if message:
            messages.append(message)
        pending[(spec.kind, spec.name)] = spec
    return messages


def build_plugin_manager(
    load_entrypoints: bool = True, builtins: Sequence[str] | None = None
) -> GdmdPluginManager:
    """Build a plugin manager: built-in plugins first, then the entry points of group
    ``gdmd``, then the registries.

    ``builtins`` replaces :data:`DEFAULT_PLUGINS` (tests use it to get a registry whose
    contents they control). A registration error of a built-in plugin, or of one registered
    in code, raises :class:`RegistryError`; a third-party plugin's becomes a recorded failure.
    """
    pm = GdmdPluginManager()
    for module_name in DEFAULT_PLUGINS if builtins is None else builtins:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise RegistryError(
                f'built-in plugin "{module_name}" failed to import: {_error_text(exc)}'
            ) from exc
        pm._register(module, module_name, _Origin("builtin", "gdmd", __version__))
    if load_entrypoints:
        pm.load_entrypoint_plugins()
    pm.registries  # noqa: B018 -- build now so registration errors surface here
    return pm
