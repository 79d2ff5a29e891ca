"""One typed registry per component kind: model, reward, target, prompts.

Plugins fill the registries through the ``gdmd_register_*`` hooks (see :mod:`gdmd.hookspecs`);
:func:`gdmd.manager.build_plugin_manager` builds them. A recipe's ``kind = "<name>"`` resolves
only through these registries, so ``gdmd list-plugins`` shows the complete vocabulary.

Imports no torch.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from gdmd.config import ComponentConfig, EmptyConfig
from gdmd.errors import RegistryError, UnknownComponentError

if TYPE_CHECKING:
    from gdmd.interfaces import BuildContext

ComponentKind = Literal["model", "reward", "target", "prompts"]

#: Every component kind, in the order registries and listings use.
KINDS: tuple[ComponentKind, ...] = get_args(ComponentKind)

#: The roles a model family can fill.
MODEL_ROLES: tuple[str, ...] = ("teacher", "student", "critic")

#: What a factory looks like: ``factory(validated_config, build_context) -> component``.
ComponentFactory = Callable[[Any, "BuildContext"], object]

#: Keys a recipe table uses itself, so a component's config must not declare them (they
#: would be unreachable). Kept in step with the table heads in :mod:`gdmd.recipe` (a test
#: checks it).
RESERVED_CONFIG_KEYS: dict[str, frozenset[str]] = {
    "model": frozenset(
        {"kind", "guidance_scale", "guidance_jitter", "init_from", "steps", "timesteps"}
    ),
    "reward": frozenset({"kind", "weight", "normalise"}),
    "target": frozenset({"kind"}),
    "prompts": frozenset({"kind"}),
}

_SINGULAR = {"model": "model", "reward": "reward", "target": "target", "prompts": "prompt source"}
_PLURAL = {"model": "models", "reward": "rewards", "target": "targets", "prompts": "prompt sources"}
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def kind_label(kind: str, plural: bool = False) -> str:
    """How messages name a kind: ``"reward"``, ``"prompt sources"``."""
    return (_PLURAL if plural else _SINGULAR)[kind]


def did_you_mean(word: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to ``word`` when one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


class Register(Protocol):
    """The ``register`` callable every ``gdmd_register_*`` hook receives.

    ``register(name, factory, *, config=None, summary="", roles=("teacher", "student",
    "critic"))``: ``factory(config, ctx)`` builds the component from its validated
    ``config`` (an instance of ``config``, or :class:`~gdmd.config.EmptyConfig` when left
    out) and a :class:`~gdmd.interfaces.BuildContext`. ``roles`` matters only for models.
    """

    def __call__(
        self,
        name: str,
        factory: ComponentFactory,
        *,
        config: type[ComponentConfig] | None = None,
        summary: str = "",
        roles: Sequence[str] = MODEL_ROLES,
    ) -> None: ...


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component: what a recipe's ``kind = "<name>"`` resolves to.

    ``plugin`` is the plugin that registered it; ``distribution`` and ``version`` the
    installed distribution that plugin came from (``None`` for plugins registered in code).
    ``roles`` is empty for everything but models.
    """

    kind: ComponentKind
    name: str
    factory: ComponentFactory
    config: type[ComponentConfig] = EmptyConfig
    summary: str = ""
    plugin: str = ""
    distribution: str | None = None
    version: str | None = None
    roles: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        what = f'{kind_label(self.kind) if self.kind in KINDS else "component"} "{self.name}"'
        by = f' (plugin "{self.plugin}")' if self.plugin else ""
        if self.kind not in KINDS:
            raise RegistryError(f"{what}{by}: kind must be one of {', '.join(KINDS)}")
        if not isinstance(self.name, str) or not _NAME_PATTERN.fullmatch(self.name):
            raise RegistryError(
                f"{kind_label(self.kind)} name {self.name!r}{by} is not valid: use letters, "
                "digits, '-', '_' and '.', starting with a letter or digit"
            )
        if not callable(self.factory):
            raise RegistryError(f"{what}{by}: factory must be callable, got {self.factory!r}")
        if not (isinstance(self.config, type) and issubclass(self.config, ComponentConfig)):
            raise RegistryError(
                f"{what}{by}: config must be a subclass of gdmd.config.ComponentConfig, "
                f"got {self.config!r}"
            )
        if not isinstance(self.summary, str):
            raise RegistryError(f"{what}{by}: summary must be a string")
        clashes = sorted(set(self.config.model_fields) & RESERVED_CONFIG_KEYS[self.kind])
        if clashes:
            raise RegistryError(
                f"{what}{by}: config {self.config.__name__} declares "
                f"{', '.join(repr(c) for c in clashes)}, which the recipe table of a "
                f"{kind_label(self.kind)} uses itself; rename the field"
            )
        if self.kind == "model":
            unknown = [r for r in self.roles if r not in MODEL_ROLES]
            if unknown or not self.roles:
                raise RegistryError(
                    f"{what}{by}: roles must be a non-empty subset of "
                    f"{', '.join(MODEL_ROLES)}, got {list(self.roles)!r}"
                )
        elif self.roles:
            raise RegistryError(f"{what}{by}: only models have roles")

    def validate_config(self, data: Mapping[str, Any]) -> ComponentConfig:
        """Validate a table of options against this component's config model.

        Raises pydantic's ``ValidationError``; recipes turn it into a :class:`RecipeError`.
        """
        return self.config.model_validate(dict(data))

    def build(self, config: ComponentConfig | Mapping[str, Any] | None, ctx: BuildContext) -> Any:
        """Call the factory: ``factory(config, ctx)``.

        ``config`` is this component's validated config (a mapping is validated first, and
        ``None`` means all defaults).
        """
        if config is None or isinstance(config, Mapping):
            config = self.validate_config(config or {})
        elif not isinstance(config, self.config):
            raise RegistryError(
                f'{kind_label(self.kind)} "{self.name}" needs a {self.config.__name__} config, '
                f"got {type(config).__name__}"
            )
        return self.factory(config, ctx)


class Registry:
    """The components of one kind, by name.

    Iterating yields the :class:`ComponentSpec` objects sorted by name; ``name in registry``
    tests membership.
    """

    def __init__(self, kind: ComponentKind) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}")
        self.kind: ComponentKind = kind
        self._specs: dict[str, ComponentSpec] = {}

    def duplicate_message(self, spec: ComponentSpec) -> str | None:
        """The error :meth:`add` would raise for ``spec``'s name, or ``None`` if it is free."""
        existing = self._specs.get(spec.name)
        if existing is None:
            return None
        return (
            f'{kind_label(self.kind)} "{spec.name}" is registered twice: '
            f'by plugin "{existing.plugin}" and by plugin "{spec.plugin}"'
        )

    def add(self, spec: ComponentSpec) -> None:
        """Add a component; a name registered before raises :class:`RegistryError`."""
        if spec.kind != self.kind:
            raise RegistryError(
                f'cannot add {kind_label(spec.kind)} "{spec.name}" to the {kind_label(self.kind)}'
                " registry"
            )
        message = self.duplicate_message(spec)
        if message:
            raise RegistryError(message)
        self._specs[spec.name] = spec

    def get(self, name: str) -> ComponentSpec:
        """The component called ``name``; an unknown name raises :class:`UnknownComponentError`
        listing the known names and the closest spelling."""
        spec = self._specs.get(name)
        if spec is None:
            raise UnknownComponentError(self.unknown_message(name))
        return spec

    def unknown_message(self, name: str) -> str:
        """``unknown reward "hpsv3"; did you mean "hpsv2"? Known rewards: clip, hpsv2``."""
        names = self.names()
        suggestion = did_you_mean(name, names)
        hint = f'; did you mean "{suggestion}"?' if suggestion else "."
        known = ", ".join(names) if names else "(none registered)"
        return (
            f'unknown {kind_label(self.kind)} "{name}"{hint} '
            f"Known {kind_label(self.kind, plural=True)}: {known}"
        )

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._specs)

    def __iter__(self) -> Iterator[ComponentSpec]:
        return iter([self._specs[name] for name in self.names()])

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()!r})"


@dataclass
class Registries:
    """The four registries: ``.models``, ``.rewards``, ``.targets``, ``.prompts``."""

    models: Registry = field(default_factory=lambda: Registry("model"))
    rewards: Registry = field(default_factory=lambda: Registry("reward"))
    targets: Registry = field(default_factory=lambda: Registry("target"))
    prompts: Registry = field(default_factory=lambda: Registry("prompts"))

    def by_kind(self, kind: str) -> Registry:
        """The registry of ``kind`` (``"model"``, ``"reward"``, ``"target"``, ``"prompts"``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
        return {
            "model": self.models,
            "reward": self.rewards,
            "target": self.targets,
            "prompts": self.prompts,
        }[kind]

    def add(self, spec: ComponentSpec) -> None:
        """Add ``spec`` to the registry of its kind."""
        self.by_kind(spec.kind).add(spec)

    def get(self, kind: str, name: str) -> ComponentSpec:
        """``by_kind(kind).get(name)``."""
        return self.by_kind(kind).get(name)

    def __iter__(self) -> Iterator[ComponentSpec]:
        """Every component: models, rewards, targets, prompt sources, each sorted by name."""
        for kind in KINDS:
            yield from self.by_kind(kind)
