"""Validating recipe data: every table against its model, every ``kind`` through the registry.

``parse_recipe(data, source, registries)`` applies ``--set`` overrides, resolves every
``kind`` through the registries and validates every table, including each component's own
config. All problems are collected and raised together as one
:class:`gdmd.errors.RecipeError`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import ValidationError

from gdmd.config import ComponentConfig
from gdmd.errors import RecipeError, UnknownComponentError
from gdmd.recipe.overrides import Override, OverrideSyntaxError, parse_override, set_value
from gdmd.recipe.problems import Problems, show
from gdmd.recipe.resolved import (
    REQUIRED_TABLES,
    TABLES,
    CriticSpec,
    PromptsSpec,
    Recipe,
    RewardSpec,
    StudentSpec,
    TargetSpec,
    TeacherSpec,
)
from gdmd.recipe.tables import (
    AccelerateConfig,
    CriticHead,
    EvalConfig,
    LogConfig,
    PromptsHead,
    RewardHead,
    RunConfig,
    StudentHead,
    Table,
    TargetHead,
    TeacherHead,
    TrainConfig,
)
from gdmd.registry import ComponentSpec, Registries, did_you_mean

if TYPE_CHECKING:
    from gdmd.manager import GdmdPluginManager

_TableT = TypeVar("_TableT", bound=Table)


def parse_recipe(
    data: Mapping[str, Any],
    source: str | Path | None = None,
    registries: Registries | GdmdPluginManager | None = None,
    overrides: Sequence[str] = (),
) -> Recipe:
    """Validate recipe ``data`` (already parsed TOML) after applying ``overrides``.

    ``source`` names the file in messages. Raises :class:`RecipeError` listing every problem.
    """
    if registries is None:
        raise TypeError("parse_recipe needs registries (or a plugin manager) to resolve kinds")
    label = str(source) if source is not None else "<recipe>"
    values: dict[str, Any] = copy.deepcopy(dict(data))
    problems = Problems(label)
    applied: list[Override] = []
    for text in overrides:
        try:
            override = parse_override(text)
        except OverrideSyntaxError as exc:
            problems.add((), (), f"--set {text}: {exc}")
            continue
        reason = set_value(values, override.path, override.value)
        if reason:
            problems.add((), (), f"--set {text}: {reason}")
            continue
        problems.overrides[override.path] = text
        applied.append(override)
    override_problems = list(problems.items)

    source_path = Path(source) if source is not None else None
    recipe = _Parser(values, source_path, registries, problems).parse()
    # `--set run.name=2024` parses as a number; when the key wants a string, mean the text.
    retry = False
    for override in applied:
        if override.bare is not None and any(
            p.error_type == "string_type" and (*p.table, *p.key) == override.path
            for p in problems.items
        ):
            set_value(values, override.path, override.bare)
            retry = True
    if retry:
        problems.items = list(override_problems)
        recipe = _Parser(values, source_path, registries, problems).parse()
    if problems or recipe is None:
        raise RecipeError(problems.lines())
    return recipe


class _Parser:
    """One validation pass over a recipe's data, adding to ``problems``."""

    def __init__(
        self,
        data: dict[str, Any],
        source: Path | None,
        registries: Registries | GdmdPluginManager,
        problems: Problems,
    ) -> None:
        self.data = data
        self.source = source
        self.registries = registries
        self.problems = problems
        #: The teacher's resolved kind and component keys, once known.
        self.teacher_family: tuple[str, dict[str, Any]] | None = None

    def parse(self) -> Recipe | None:
        declared = self._check_top_level()
        run = self._fixed("run", RunConfig)
        teacher = self._teacher()
        student = self._student()
        critic = self._critic()
        rewards = self._rewards()
        target = self._target()
        prompts = self._prompts()
        train = self._fixed("train", TrainConfig)
        accelerate = self._fixed("accelerate", AccelerateConfig)
        log = self._fixed("log", LogConfig)
        eval_ = self._fixed("eval", EvalConfig)
        if self.problems:
            return None
        assert run and teacher and student and critic and rewards is not None and target
        assert prompts and train and accelerate and log and eval_
        return Recipe(
            source=self.source,
            run=run,
            teacher=teacher,
            student=student,
            critic=critic,
            rewards=rewards,
            target=target,
            prompts=prompts,
            train=train,
            accelerate=accelerate,
            log=log,
            eval=eval_,
            declared_tables=tuple(declared),
        )

    # -- structure --------------------------------------------------------------------------

    def _check_top_level(self) -> list[str]:
        declared = []
        for name, value in self.data.items():
            if name not in TABLES:
                suggestion = did_you_mean(name, TABLES)
                hint = (
                    f' (did you mean "[{suggestion}]"?)'
                    if suggestion
                    else f" (known tables: {', '.join(TABLES)})"
                )
                if isinstance(value, dict):
                    self.problems.add((name,), (), f"unknown table{hint}")
                else:
                    self.problems.add((), (name,), f"unknown key outside any table{hint}")
            elif name == "reward":
                if not isinstance(value, dict):
                    self.problems.add(
                        ("reward",), (), f"expected tables [reward.<label>], got {show(value)}"
                    )
                    continue
                for label, table in value.items():
                    if isinstance(table, dict):
                        declared.append(f"reward.{label}")
                    else:
                        self.problems.add(
                            ("reward",),
                            (label,),
                            f"expected a table [reward.{label}] of reward settings, "
                            f"got {show(table)}",
                        )
            elif not isinstance(value, dict):
                self.problems.add((name,), (), f"expected a table, got {show(value)}")
            else:
                declared.append(name)
        for name in REQUIRED_TABLES:
            if name not in self.data:
                self.problems.add((name,), (), "missing table; every recipe needs one")
        return declared

    def _table(self, name: str) -> dict[str, Any] | None:
        """The table's values; ``None`` when it is not a table (already reported)."""
        value = self.data.get(name, {})
        return value if isinstance(value, dict) else None

    def _validate(
        self, table: tuple[str, ...], model: type[_TableT], values: dict[str, Any]
    ) -> _TableT | None:
        try:
            result = model.model_validate(values)
        except ValidationError as exc:
            self.problems.add_validation_error(table, exc, model, values)
            return None
        cross = result.cross_problems()
        for key, message in cross:
            self.problems.add(table, (key,), message)
        return None if cross else result

    def _fixed(self, name: str, model: type[_TableT]) -> _TableT | None:
        values = self._table(name)
        return None if values is None else self._validate((name,), model, values)

    # -- pluggable tables -------------------------------------------------------------------

    def _resolve(self, kind: str, name: str) -> ComponentSpec:
        require = getattr(self.registries, "require_component", None)
        if require is not None:
            spec: ComponentSpec = require(kind, name)
            return spec
        assert isinstance(self.registries, Registries)
        return self.registries.get(kind, name)

    def _component(
        self,
        table: tuple[str, ...],
        values: dict[str, Any],
        head_model: type[_TableT],
        component_kind: str,
        *,
        default_kind: str | None = None,
        default_note: str = "",
        role: str | None = None,
        inherit: tuple[str, dict[str, Any]] | None = None,
    ) -> tuple[_TableT | None, ComponentSpec | None, ComponentConfig | None]:
        """Validate a pluggable table: its own keys against ``head_model``, the ``kind``
        through the registry, every other key against the component's config.

        ``inherit`` is ``(kind, values)`` of another table whose component keys this table
        starts from when it has the same kind (a student of the teacher's family).
        """
        head_keys = set(head_model.model_fields)
        head_values = {k: v for k, v in values.items() if k in head_keys}
        rest = {k: v for k, v in values.items() if k not in head_keys}
        head = self._validate(table, head_model, head_values)

        explicit = "kind" in values
        name = values["kind"] if explicit else default_kind
        if not isinstance(name, str) or not name:
            return head, None, None
        try:
            spec = self._resolve(component_kind, name)
        except UnknownComponentError as exc:
            self.problems.add(table, ("kind",), str(exc) + ("" if explicit else default_note))
            return head, None, None
        if role is not None and role not in spec.roles:
            defaulted = "" if explicit else " (the teacher's kind, used when no kind is set)"
            self.problems.add(
                table,
                ("kind",),
                f'model "{spec.name}"{defaulted} cannot be a {role}; it can be: '
                f"{', '.join(spec.roles)}",
            )

        config_values, only_keys = rest, None
        if inherit is not None and inherit[0] == spec.name:
            config_values, only_keys = {**inherit[1], **rest}, list(rest)
        try:
            config = spec.validate_config(config_values)
        except ValidationError as exc:
            self.problems.add_validation_error(
                table, exc, spec.config, config_values, extra_keys=head_keys, only_keys=only_keys
            )
            return head, spec, None
        except Exception as exc:  # a plugin's validator with a bug
            self.problems.add(
                table,
                (),
                f'the config of {component_kind} "{spec.name}" (plugin "{spec.plugin}") failed '
                f"to validate: {type(exc).__name__}: {exc}",
            )
            return head, spec, None
        return head, spec, config

    def _teacher(self) -> TeacherSpec | None:
        values = self._table("teacher")
        if values is None or "teacher" not in self.data:
            return None
        head, spec, config = self._component(
            ("teacher",), values, TeacherHead, "model", role="teacher"
        )
        if spec is not None:
            # A student or critic of the teacher's family starts from the teacher's keys.
            rest = {k: v for k, v in values.items() if k not in TeacherHead.model_fields}
            self.teacher_family = (spec.name, rest)
        if head is None or spec is None or config is None or "teacher" not in spec.roles:
            return None
        return TeacherSpec(
            kind=spec.name,
            guidance_scale=head.guidance_scale,
            guidance_jitter=head.guidance_jitter,
            config=config,
            component=spec,
        )

    def _model_in_role(
        self, role: Literal["student", "critic"], head_model: type[_TableT]
    ) -> tuple[_TableT, ComponentSpec, ComponentConfig] | None:
        values = self._table(role)
        if values is None:
            return None
        family = self.teacher_family
        head, spec, config = self._component(
            (role,),
            values,
            head_model,
            "model",
            default_kind=family[0] if family else None,
            role=role,
            inherit=family,
        )
        if head is None or spec is None or config is None or role not in spec.roles:
            return None
        return head, spec, config

    def _student(self) -> StudentSpec | None:
        resolved = self._model_in_role("student", StudentHead)
        if resolved is None:
            return None
        head, spec, config = resolved
        return StudentSpec(
            kind=spec.name,
            init_from=head.init_from,
            steps=head.steps,
            timesteps=tuple(head.timesteps) if head.timesteps is not None else None,
            config=config,
            component=spec,
        )

    def _critic(self) -> CriticSpec | None:
        resolved = self._model_in_role("critic", CriticHead)
        if resolved is None:
            return None
        head, spec, config = resolved
        return CriticSpec(kind=spec.name, init_from=head.init_from, config=config, component=spec)

    def _rewards(self) -> dict[str, RewardSpec] | None:
        tables = self.data.get("reward", {})
        if not isinstance(tables, dict):
            return None
        rewards: dict[str, RewardSpec] = {}
        ok = True
        for label, values in tables.items():
            if not isinstance(values, dict):
                ok = False
                continue
            if not label:
                # An empty label would also be the default kind, and no reward has that name.
                message = "a reward table needs a label, e.g. [reward.clip]"
                self.problems.add(("reward",), (label,), message)
                ok = False
                continue
            head, spec, config = self._component(
                ("reward", label),
                values,
                RewardHead,
                "reward",
                default_kind=label,
                default_note=f' (with no kind set, the kind is the label "{label}")',
            )
            if head is None or spec is None or config is None:
                ok = False
                continue
            rewards[label] = RewardSpec(
                label=label,
                kind=spec.name,
                weight=head.weight,
                normalise=head.normalise,
                config=config,
                component=spec,
            )
        return rewards if ok else None

    def _target(self) -> TargetSpec | None:
        values = self._table("target")
        if values is None:
            return None
        default = TargetHead.model_fields["kind"].default
        head, spec, config = self._component(
            ("target",),
            values,
            TargetHead,
            "target",
            default_kind=default,
            default_note=f' (the default target is "{default}")',
        )
        if head is None or spec is None or config is None:
            return None
        return TargetSpec(kind=spec.name, config=config, component=spec)

    def _prompts(self) -> PromptsSpec | None:
        values = self._table("prompts")
        if values is None or "prompts" not in self.data:
            return None
        head, spec, config = self._component(("prompts",), values, PromptsHead, "prompts")
        if head is None or spec is None or config is None:
            return None
        return PromptsSpec(kind=spec.name, config=config, component=spec)
