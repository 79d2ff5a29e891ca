"""Recipes generated and mutated with hypothesis, and the check every one must pass.

Shared by ``tests/reliability/test_recipe_fuzz.py`` (a CI-sized sample) and
``benchmarks/reliability.py fuzz`` (the counted figure in ``docs/reliability.md``).

A case starts from a shipped recipe and applies up to four mutations: a value replaced by one of
another type (huge numbers, NaN, odd Unicode, empty strings, arrays, tables), a key or a
table removed, an unknown key or table added, a ``kind`` changed to an unknown name, a table
replaced by a value; then, sometimes, the TOML text itself damaged (a byte changed, the text
cut, invalid UTF-8), and a few ``--set`` expressions, well formed or not. The case is run
through the real command line, ``gdmd validate``, and must end in one of two ways:

* exit 0 (the recipe is valid), and the resolved recipe (``resolved.toml``) loads back to
  the same recipe;
* exit 2 with ``error:`` and a message that names the recipe file or the ``--set`` at fault.

Anything else (a traceback, another exit code, a message naming nothing) is a failure.
"""

from __future__ import annotations

import copy
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import strategies as st

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
#: The recipes mutated: every shipped TOML recipe (tiny, toy, SD3).
BASE_RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))

ODD_TEXT = [
    "",
    " ",
    "\u202etxet",  # right-to-left override
    "ﬁ",  # a ligature that NFKC turns into "fi"
    "𝕥𝕚𝕟𝕪-𝕦𝕟𝕖𝕥",
    "tiny\u200bunet",  # zero-width space
    "e\u0301",  # combining accent
    "\u0000",
    "\n\t\r",
    "日本語",
    "🙂" * 40,
    "x" * 5000,
    "../../etc/passwd",
    "${HOME}",
    "%s%s%n",
    "[run]",
    '"quoted"',
]
HUGE_NUMBERS = [
    2**63 - 1,
    -(2**63),
    2**64,
    10**30,
    -(10**30),
    1e308,
    -1e308,
    5e-324,
    float("inf"),
    float("-inf"),
    float("nan"),
    0,
    -1,
    -0.0,
]

#: Text made of TOML's own punctuation, to reach the parsers' corners (comments, quoting).
toml_text = st.text(alphabet="#=\"'[]{}.,\\\n\t ab1-_", max_size=12)
texts = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=30), toml_text)
scalars = st.one_of(
    st.sampled_from(HUGE_NUMBERS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    texts,
)
#: Any TOML value: scalars, arrays (mixed types allowed since TOML 1.0) and tables.
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=3)
    ),
    max_leaves=8,
)
#: A ``kind`` that is probably not registered, or a near miss of one that is.
kinds = st.one_of(
    texts,
    st.sampled_from(["tiny_unet", "Tiny-Unet", "gdmd ", "dmdr2", "list", "file", "brightnes"]),
)


@dataclass
class Case:
    """One generated recipe: its base, the TOML text (or bytes) and the ``--set`` values."""

    base: str
    mutations: list[str]
    text: bytes
    overrides: list[str]


def _paths(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in ``data`` (tables and values alike)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = (*prefix, key)
            found.append(path)
            found.extend(_paths(value, path))
    return found


def _parent(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = data
    for key in path[:-1]:
        node = node[key]
    return node


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A recipe case: a shipped recipe with 0-4 mutations, maybe damaged text, maybe --set."""
    base = draw(st.sampled_from(BASE_RECIPES))
    data: dict[str, Any] = tomllib.loads(base.read_text())
    data = copy.deepcopy(data)
    mutations: list[str] = []
    # No mutation at all keeps a share of valid recipes, whose resolved.toml is checked.
    for _ in range(draw(st.integers(0, 4))):
        paths = _paths(data)
        op = draw(
            st.sampled_from(
                ["replace", "replace", "delete", "add", "kind", "add_table", "table_to_value"]
            )
        )
        if op in ("replace", "delete", "add", "kind") and not paths:
            op = "add_table"
        if op == "replace":
            path = draw(st.sampled_from(paths))
            _parent(data, path)[path[-1]] = copy.deepcopy(draw(values))
        elif op == "delete":
            path = draw(st.sampled_from(paths))
            del _parent(data, path)[path[-1]]
        elif op == "add":
            path = draw(st.sampled_from(paths))
            parent = _parent(data, path)
            parent[draw(texts)] = copy.deepcopy(draw(values))
        elif op == "kind":
            tables = [p for p in paths if p[-1] == "kind"]
            path = draw(st.sampled_from(tables)) if tables else ("target", "kind")
            node = data
            for key in path[:-1]:
                node = node.setdefault(key, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node["kind"] = draw(kinds)
        elif op == "add_table":
            name = draw(st.one_of(texts, st.sampled_from(["trian", "reward", "evals", "Run"])))
            data[name] = copy.deepcopy(draw(st.dictionaries(texts, values, max_size=3)))
        else:
            tables = [p for p in paths if isinstance(_parent(data, p)[p[-1]], dict)]
            path = draw(st.sampled_from(tables)) if tables else ("run",)
            _parent(data, path)[path[-1]] = draw(scalars)
        mutations.append(f"{op} {'.'.join(path) if op != 'add_table' else name}")
    try:
        text = tomli_w.dumps(data).encode("utf-8")
    except (TypeError, ValueError) as exc:
        # Not every mutated structure is writable as TOML (e.g. NaN in some places for
        # older writers): the case becomes the base recipe's text, damaged below.
        mutations.append(f"unwritable ({exc})")
        text = base.read_bytes()
    damage = draw(st.sampled_from(["none", "none", "none", "byte", "cut", "utf8", "prefix"]))
    if damage != "none" and text:
        at = draw(st.integers(0, len(text) - 1))
        if damage == "byte":
            text = text[:at] + bytes([draw(st.integers(0, 255))]) + text[at + 1 :]
        elif damage == "cut":
            text = text[:at]
        elif damage == "utf8":
            text = text[:at] + b"\xff\xfe" + text[at:]
        else:
            text = draw(texts).encode("utf-8") + b"\n" + text
        mutations.append(f"text damage: {damage} at byte {at}")
    overrides = draw(st.lists(set_expressions(data), max_size=3))
    return Case(str(base.relative_to(ROOT)), mutations, text, overrides)


@st.composite
def set_expressions(draw: st.DrawFn, data: dict[str, Any]) -> str:
    """A ``--set`` expression: a known or unknown key with any value, or free text."""
    form = draw(st.sampled_from(["known", "unknown", "free", "literal"]))
    paths = [".".join(p) for p in _paths(data) if all(p)] or ["train.steps"]
    if form == "free":
        fixed = ["=", "==", ".=1", "a..b=1", "=1", "x=", "#x=1", " # =1", "a.#=1"]
        return draw(st.one_of(texts, st.sampled_from(fixed)))
    key = draw(st.sampled_from(paths)) if form != "unknown" else draw(texts)
    if form == "literal":
        value = draw(st.sampled_from(["[1, 2", "{a = }", '"unterminated', "1979-05-27", "0x1g"]))
    else:
        scalar = draw(scalars)
        try:
            value = tomli_w.dumps({"v": scalar}).removeprefix("v = ").strip()
        except (TypeError, ValueError):
            value = str(scalar)
        value = draw(st.sampled_from([value, str(scalar)]))
    return f"{key}={value}"


@dataclass
class Outcomes:
    """How the cases ended: ``valid``, ``refused`` (exit 2 naming the problem), ``failed``."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def check_case(case: Case, workdir: Path, app: Any, pm: Any, outcomes: Outcomes) -> str | None:
    """Run ``gdmd validate`` on ``case``; record the outcome; return why it failed, or None."""
    from typer.testing import CliRunner

    from gdmd.errors import GdmdError
    from gdmd.recipe import load_recipe, parse_recipe

    recipe = workdir / "fuzzed.toml"
    recipe.write_bytes(case.text)
    args = ["validate", str(recipe), *(f"--set={o}" for o in case.overrides)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "10000"})
    output = result.output
    problem = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        problem = f"traceback: {type(exc).__name__}: {exc}"
    elif result.exit_code == 0:
        # Valid: the resolved recipe a run would write must load back to the same recipe.
        try:
            loaded = load_recipe(recipe, pm, case.overrides)
            again = parse_recipe(tomllib.loads(loaded.to_toml()), loaded.source, pm)
            if again != loaded:
                problem = "resolved.toml does not load back to the same recipe"
        except (GdmdError, ValueError, TypeError) as exc:
            problem = f"valid, but resolved.toml fails: {type(exc).__name__}: {exc}"
    elif result.exit_code != 2:
        problem = f"exit {result.exit_code}: {output[-300:]}"
    elif "error:" not in output:
        problem = f"exit 2 without an error message: {output[-300:]}"
    elif str(recipe) not in output and "--set" not in output:
        problem = f"the message names neither the file nor a --set: {output[-300:]}"
    if problem is None:
        outcomes.counts["valid" if result.exit_code == 0 else "refused"] += 1
        return None
    outcomes.counts["failed"] += 1
    report = (
        f"{problem}\n  base {case.base}; mutations {case.mutations}; --set {case.overrides}\n"
        f"  text {case.text[:400]!r}"
    )
    outcomes.failures.append(report)
    return report
