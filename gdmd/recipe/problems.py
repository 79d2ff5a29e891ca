"""Turning everything wrong with a recipe into one human line each.

Every line names the file, the table and the key: ``recipes/x.toml: [train] steps: must be
>= 1, got 0``. pydantic's error types are mapped to gdmd's own phrasing so users read one
consistent vocabulary (TOML's: integer, number, string, array, table, true/false).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from gdmd.registry import did_you_mean

Loc = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "an array",
    "tuple_type": "an array",
    "set_type": "an array",
    "frozen_set_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dataclass_type": "a table",
    "date_type": "a date",
    "datetime_type": "a date-time",
    "time_type": "a time",
}

_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
    "multiple_of": ("a multiple of", "multiple_of"),
}


def show(value: Any) -> str:
    """A value as a recipe would spell it: strings quoted, ``true``/``false``, ``a table``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        return "a table"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    elif isinstance(value, (datetime, date, time)):
        text = value.isoformat()
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _show_bound(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return show(value)


def format_table(table: Sequence[str]) -> str:
    """``("reward", "my clip")`` -> ``reward."my clip"``."""
    return ".".join(part if _BARE_KEY.fullmatch(part) else json.dumps(part) for part in table)


def format_key(key: Loc) -> str:
    """``("adam_betas", 1)`` -> ``adam_betas[1]``; ``("lora", "rank")`` -> ``lora.rank``."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{name}" if text else name
    return text


@dataclass
class Problem:
    """One thing wrong with a recipe: where, what, and the pydantic error type if any."""

    table: tuple[str, ...]
    key: Loc
    message: str
    error_type: str = ""


@dataclass
class Problems:
    """Collects every problem of a recipe; ``lines()`` renders them for :class:`RecipeError`.

    ``overrides`` maps the key path of each ``--set`` to its text, so a problem with an
    overridden value says where the value came from.
    """

    source: str
    overrides: dict[tuple[str, ...], str] = field(default_factory=dict)
    items: list[Problem] = field(default_factory=list)

    def add(self, table: Sequence[str], key: Loc, message: str, error_type: str = "") -> None:
        self.items.append(Problem(tuple(table), tuple(key), message, error_type))

    def __bool__(self) -> bool:
        return bool(self.items)

    def override_for(self, path: Loc) -> str | None:
        """The ``--set`` text whose key path overlaps ``path``, the most specific one."""
        best: tuple[int, str] | None = None
        for override_path, text in self.overrides.items():
            shared = min(len(override_path), len(path))
            if tuple(path[:shared]) == override_path[:shared] and shared:
                if best is None or len(override_path) > best[0]:
                    best = (len(override_path), text)
        return best[1] if best else None

    def line(self, problem: Problem) -> str:
        where = f"{self.source}: "
        if problem.table:
            where += f"[{format_table(problem.table)}]"
            where += f" {format_key(problem.key)}: " if problem.key else ": "
        elif problem.key:
            where += f"{format_key(problem.key)}: "
        message = problem.message.replace("\n", "\n    ")
        override = self.override_for((*problem.table, *problem.key))
        if override and problem.table:
            message += f" (from --set {override})"
        return where + message

    def lines(self) -> list[str]:
        seen: list[str] = []
        for problem in self.items:
            text = self.line(problem)
            if text not in seen:
                seen.append(text)
        return seen

    def add_validation_error(
        self,
        table: Sequence[str],
        exc: ValidationError,
        model: type[BaseModel],
        values: Mapping[str, Any],
        extra_keys: Iterable[str] = (),
        only_keys: Iterable[str] | None = None,
    ) -> None:
        """Record every error of ``exc`` raised validating ``values`` against ``model``.

        ``extra_keys`` are other keys allowed in the same table (offered as spellings);
        with ``only_keys``, errors on other top-level keys are skipped (they were reported
        where those values came from).
        """
        keep = None if only_keys is None else set(only_keys)
        for error in _merge_tuple_errors(exc.errors(), values):
            loc: Loc = tuple(error["loc"])
            if keep is not None and loc and loc[0] not in keep:
                continue
            if error["type"] == "extra_forbidden":
                candidates = _keys_of(_model_at(model, loc[:-1]))
                if len(loc) == 1:
                    candidates += list(extra_keys)
                message = unknown_key_message(str(loc[-1]), candidates)
            else:
                message = describe_error(error)
            self.add(table, loc, message, error["type"])


def unknown_key_message(key: str, candidates: Sequence[str]) -> str:
    """``unknown key (did you mean "steps"?)``, or the known keys when none is close."""
    suggestion = did_you_mean(key, candidates)
    if suggestion:
        return f'unknown key (did you mean "{suggestion}"?)'
    if candidates:
        return f"unknown key (known keys: {', '.join(sorted(set(candidates)))})"
    return "unknown key (this table takes no keys)"


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error in gdmd's words, e.g. ``expected an integer, got "ten"``."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {show(value)}"
    if kind == "missing":
        return "missing required key"
    if kind == "gdmd_tuple_length" or (kind == "too_long" and ctx.get("field_type") == "Tuple"):
        expected = ctx.get("expected", ctx.get("max_length"))
        return f"expected {expected} values, got {ctx.get('actual_length', len(value or ()))}"
    if kind in _BOUNDS:
        word, name = _BOUNDS[kind]
        return f"must be {word} {_show_bound(ctx.get(name))}, got {show(value)}"
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        if not choices:
            return f"must be {ctx.get('expected')}, got {show(value)}"
        text = f"must be one of {', '.join(json.dumps(c) for c in choices)}, got {show(value)}"
        suggestion = did_you_mean(value, choices) if isinstance(value, str) else None
        return text + (f' (did you mean "{suggestion}"?)' if suggestion else "")
    if kind == "too_short":
        count = ctx.get("min_length")
        return f"needs at least {count} item{'s' * (count != 1)}, got {ctx.get('actual_length')}"
    if kind == "too_long":
        count = ctx.get("max_length")
        return f"takes at most {count} item{'s' * (count != 1)}, got {ctx.get('actual_length')}"
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must be at least {ctx.get('min_length')} characters, got {show(value)}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters, got {show(value)}"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}, got {show(value)}"
    message = str(error.get("msg", kind))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    message = message[:1].lower() + message[1:]
    if kind in ("value_error", "assertion_error"):
        return message
    return f"{message}, got {show(value)}"


def _merge_tuple_errors(errors: list[Any], values: Mapping[str, Any]) -> list[Any]:
    """pydantic reports a short fixed-length tuple as one ``missing`` per absent index;
    merge those into one ``expected N values, got M`` error on the key itself."""
    merged: list[Any] = []
    by_parent: dict[Loc, dict[str, Any]] = {}
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc and isinstance(loc[-1], int):
            parent = loc[:-1]
            given = _value_at(values, parent)
            entry = by_parent.get(parent)
            if entry is None:
                entry = {
                    "type": "gdmd_tuple_length",
                    "loc": parent,
                    "input": given,
                    "ctx": {"expected": 0, "actual_length": len(given or ())},
                }
                by_parent[parent] = entry
                merged.append(entry)
            entry["ctx"]["expected"] = max(entry["ctx"]["expected"], loc[-1] + 1)
        else:
            merged.append(error)
    return merged


def _value_at(values: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            values = values[part]
        except (KeyError, IndexError, TypeError):
            return None
    return values


def _model_at(model: type[BaseModel] | None, loc: Loc) -> type[BaseModel] | None:
    """The nested model a location points into, when it can be found from annotations."""
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        model = _find_model(info.annotation) if info is not None else None
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _keys_of(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]
