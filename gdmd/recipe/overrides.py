"""``--set key=value`` overrides of a recipe's values.

A key is a dotted TOML key (``train.steps``, ``reward.clip.weight``, ``reward."my clip".kind``).
A value is read as a TOML value when it is one (``10``, ``0.5``, ``true``, ``[1, 2]``,
``"quoted"``, ``{rank = 4}``) and as a bare string otherwise (``target.kind=gdmd``). The
result is validated like any other recipe value.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Override:
    """One parsed ``--set``: the key path, the value, and the text it came from."""

    text: str
    path: tuple[str, ...]
    value: Any
    #: The value's text when it was not quoted; used if the key turns out to be a string.
    bare: str | None


class OverrideSyntaxError(ValueError):
    """A ``--set`` that is not ``KEY=VALUE`` with a valid dotted key."""


def parse_override(text: str) -> Override:
    """Split ``KEY=VALUE`` and parse both halves; raises :class:`OverrideSyntaxError`."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise OverrideSyntaxError("expected KEY=VALUE, e.g. train.steps=100")
    try:
        parsed_key = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        raise OverrideSyntaxError(f"{key!r} is not a valid dotted key") from None
    path: list[str] = []
    node: Any = parsed_key
    while isinstance(node, dict):
        if len(node) != 1:  # e.g. "#x": a comment, so no key at all
            raise OverrideSyntaxError(f"{key!r} is not a valid dotted key")
        ((name, node),) = node.items()
        path.append(name)
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        parsed = {}
    if set(parsed) == {"value"} and not isinstance(parsed["value"], (date, datetime, time)):
        value = parsed["value"]
        bare = raw if isinstance(value, (int, float)) else None
    else:
        value, bare = raw, None
    return Override(text, tuple(path), value, bare)


def set_value(data: dict[str, Any], path: Sequence[str], value: Any) -> str | None:
    """Set ``data[path[0]][path[1]]... = value``, creating tables on the way.

    Returns why it cannot (a key on the way holds a value, not a table), else ``None``.
    """
    node = data
    for depth, name in enumerate(path[:-1]):
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            return f"{'.'.join(path[: depth + 1])} is not a table"
        node = child
    node[path[-1]] = value
    return None


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``KEY=VALUE`` of ``overrides`` applied in order.

    Raises :class:`gdmd.errors.RecipeError` naming every malformed override.
    """
    from gdmd.errors import RecipeError

    result = copy.deepcopy(dict(data))
    problems = []
    for text in overrides:
        try:
            override = parse_override(text)
        except OverrideSyntaxError as exc:
            problems.append(f"--set {text}: {exc}")
            continue
        reason = set_value(result, override.path, override.value)
        if reason:
            problems.append(f"--set {text}: {reason}")
    if problems:
        raise RecipeError(problems)
    return result
