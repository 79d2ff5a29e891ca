"""Which part of gdmd may import which (docs/architecture.md), read statically from the source.

Every ``import`` is found with ``ast``, at module level and inside functions alike, so a lazy
import counts as a dependency. Two questions are asked of it:

* *What a part knows about*: the layer rules and the plugins' public API count every import,
  those under ``if TYPE_CHECKING:`` included (a type named in a signature is knowledge too).
* *What importing a part runs*: the torch-free rule follows only the imports that run when a
  module is imported (module level, not under ``TYPE_CHECKING``), through every gdmd module
  they reach.

The cycle check leaves ``TYPE_CHECKING`` imports out (they never run). A failure names the
file and line of each offending import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gdmd"
# The scaffold's templates are plugin packages of their own, not modules of gdmd.
TEMPLATES = PACKAGE / "scaffold" / "templates"
PLUGINS = ROOT / "plugins"

#: Packages that must import cheaply: importing them may not import any of these.
HEAVY = ("torch", "accelerate", "diffusers", "transformers", "peft", "open_clip", "torchvision")

#: What a plugin may import from gdmd: the contracts a third party builds on (docs/architecture.md).
PUBLIC_API = (
    "gdmd",  # hookimpl, PLUGIN_API_VERSION, __version__
    "gdmd.config",
    "gdmd.errors",
    "gdmd.hub",
    "gdmd.interfaces",
    "gdmd.registry",
    "gdmd.manager",
    "gdmd.losses",
    "gdmd.schedules",
    "gdmd.testing",
    "gdmd.testing.contracts",
    "gdmd.testing.plugin",
    "gdmd.testing.tiny_rewards",
    "gdmd.rewards",
    "gdmd.rewards.base",
    "gdmd.rewards.clip",
    "gdmd.rewards.loading",
    "gdmd.rewards.preprocess",
)


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is imported, and when it runs."""

    name: str
    path: Path
    line: int
    at_import: bool  # runs when the importing module is imported (not inside a function)
    type_only: bool  # under ``if TYPE_CHECKING:``

    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


@dataclass(frozen=True)
class Rule:
    """Modules within ``sources`` import nothing within ``forbidden``."""

    why: str
    sources: tuple[str, ...]
    forbidden: tuple[str, ...]


#: The layer rules of docs/architecture.md.
RULES = (
    Rule("evaluation never imports the training loop", ("gdmd.eval",), ("gdmd.train",)),
    Rule(
        "the math imports no model, loop, run, evaluation or CLI",
        ("gdmd.losses", "gdmd.schedules"),
        (
            "gdmd.models",
            "gdmd.toy",
            "gdmd.rewards",
            "gdmd.targets",
            "gdmd.train",
            "gdmd.run",
            "gdmd.eval",
            "gdmd.cli",
            "gdmd.recipe",
            "gdmd.builtins",
        ),
    ),
    Rule(
        "components know nothing of the CLI, the run directory or the loop",
        ("gdmd.models", "gdmd.rewards", "gdmd.targets", "gdmd.toy"),
        ("gdmd.cli", "gdmd.run", "gdmd.train"),
    ),
    Rule(
        "target strategies see models and rewards only through gdmd.interfaces",
        ("gdmd.targets",),
        ("gdmd.models", "gdmd.rewards", "gdmd.toy"),
    ),
    Rule(
        "the loop knows no CLI, run directory, evaluation, model family or reward",
        ("gdmd.train",),
        (
            "gdmd.run",
            "gdmd.cli",
            "gdmd.eval",
            "gdmd.models",
            "gdmd.toy",
            "gdmd.rewards",
            "gdmd.targets",
            "gdmd.builtins",
        ),
    ),
)

#: Importing these imports none of HEAVY (recipe validation, ``gdmd --help`` and listing
#: plugins stay fast; DESIGN.md §2-3).
TORCH_FREE = (
    "gdmd",
    "gdmd.cli",
    "gdmd.recipe",
    "gdmd.train.config",
    "gdmd.builtins",
    "gdmd.manager",
    "gdmd.scaffold",
)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _source_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if not any(part.startswith(".") or part.endswith(".egg-info") for part in path.parts):
            yield path


def gdmd_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """gdmd's modules by dotted name (the scaffold's templates left out)."""
    templates = package / "scaffold" / "templates"
    return {
        _module_name(p, package.parent): p
        for p in _source_files(package)
        if not p.is_relative_to(templates)
    }


def imports_of(path: Path, module: str, known: Iterable[str] = ()) -> list[Import]:
    """Every import in ``path`` (the module ``module``), as absolute module names.

    ``from a import b`` imports the module ``a.b`` where that is one of ``known``, else ``a``.
    """
    known = set(known)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    type_only: set[int] = set()
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for child in node.body for n in ast.walk(child))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            submodules = [f"{parent}.{alias.name}" for alias in node.names]
            names = [name for name in submodules if name in known]
            if len(names) < len(submodules):
                names.append(parent)
        for name in names:
            found.append(
                Import(name, path, node.lineno, id(node) not in in_function, id(node) in type_only)
            )
    return found


def rule_violations(rule: Rule, package: Path = PACKAGE) -> list[str]:
    """``file:line imports X`` for every import that breaks ``rule``."""
    modules = gdmd_modules(package)
    problems = []
    for module, path in sorted(modules.items()):
        if not any(_within(module, source) for source in rule.sources):
            continue
        for imported in imports_of(path, module, modules):
            if any(_within(imported.name, forbidden) for forbidden in rule.forbidden):
                problems.append(f"{imported.where()} imports {imported.name}")
    return sorted(set(problems))


def heavy_imports_reached(start: str, package: Path = PACKAGE) -> list[str]:
    """Each heavy import that runs when ``start`` is imported, with the chain that reaches it.

    Importing a module imports its parent packages first; only imports at module level and
    outside ``TYPE_CHECKING`` run.
    """
    modules = gdmd_modules(package)
    reached_from: dict[str, str | None] = {start: None}
    queue = [start]
    problems = []
    while queue:
        module = queue.pop(0)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        runs = [i for i in imports_of(modules[module], module, modules) if i.at_import]
        for imported in runs:
            if imported.type_only:
                continue
            if imported.name.split(".")[0] in HEAVY:
                chain = [module]
                while (previous := reached_from[chain[-1]]) is not None:
                    chain.append(previous)
                route = " <- ".join(chain)
                problems.append(f"{imported.where()} imports {imported.name} ({route})")
        targets = parents + [i.name for i in runs if not i.type_only]
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target not in reached_from:
                reached_from[target] = module
                queue.append(target)
    return sorted(problems)


def private_imports(root: Path, public: Iterable[str] = PUBLIC_API) -> list[str]:
    """``file:line imports X`` for every import of gdmd outside ``public`` under ``root``."""
    public = set(public)
    modules = gdmd_modules()
    problems = []
    for path in _source_files(root):
        for imported in imports_of(path, path.stem, modules):
            if _within(imported.name, "gdmd") and imported.name not in public:
                problems.append(f"{imported.where()} imports {imported.name}")
    return sorted(set(problems))


@pytest.mark.parametrize("rule", RULES, ids=[rule.why for rule in RULES])
def test_layer_rule(rule: Rule) -> None:
    modules = gdmd_modules()
    # A rule about a part that was renamed away would pass without checking anything.
    assert all(any(_within(m, part) for m in modules) for part in rule.sources), rule.sources
    problems = rule_violations(rule)
    assert problems == [], f"{rule.why}:\n" + "\n".join(problems)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_importing_stays_torch_free(module: str) -> None:
    assert module in gdmd_modules()
    problems = heavy_imports_reached(module)
    assert problems == [], f"importing {module} imports a heavy package:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "root",
    [*sorted(p for p in PLUGINS.iterdir() if p.is_dir()), TEMPLATES],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_first_party_plugins_and_the_scaffold_use_only_the_public_api(root: Path) -> None:
    # They are shaped exactly as a third party's plugin; what they need, a third party needs.
    problems = private_imports(root)
    assert problems == [], "imports outside the public API:\n" + "\n".join(problems)


def test_every_public_module_exists() -> None:
    assert sorted(set(PUBLIC_API) - set(gdmd_modules())) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def test_the_checks_name_the_file_and_line_of_an_offending_import(tmp_path: Path) -> None:
    package = tmp_path / "gdmd"
    _write(
        package,
        {
            "__init__.py": "",
            "eval/__init__.py": "",
            "eval/harness.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from gdmd.train.state import Components\n"
                "def run():\n"
                "    from gdmd.train import loop\n"
            ),
            "train/__init__.py": "",
            "train/loop.py": "",
            "train/state.py": "",
            "recipe/__init__.py": "from gdmd.recipe.tables import Recipe\n",
            "recipe/tables.py": "from . import helpers\n",
            "recipe/helpers.py": "import json\ndef lazy():\n    import torch\nimport torch.nn\n",
        },
    )
    rule = Rule("eval never imports train", ("gdmd.eval",), ("gdmd.train",))
    harness = package / "eval" / "harness.py"
    assert rule_violations(rule, package) == [
        f"{harness}:3 imports gdmd.train.state",
        f"{harness}:5 imports gdmd.train.loop",
    ]
    # The lazy torch import (line 3) does not run on import; the module-level one does.
    assert heavy_imports_reached("gdmd.recipe", package) == [
        f"{package / 'recipe' / 'helpers.py'}:4 imports torch.nn "
        "(gdmd.recipe.helpers <- gdmd.recipe.tables <- gdmd.recipe)"
    ]


def test_the_public_api_check_finds_a_private_import(tmp_path: Path) -> None:
    plugin = tmp_path / "p" / "__init__.py"
    _write(tmp_path, {"p/__init__.py": "import gdmd\nimport gdmd.losses\nimport gdmd.run\n"})
    assert private_imports(tmp_path) == [f"{plugin}:3 imports gdmd.run"]


def _runtime_graph() -> dict[str, set[str]]:
    modules = gdmd_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path, name, modules):
            if imported.type_only or not _within(imported.name, "gdmd"):
                continue
            target = imported.name
            # `from gdmd.toy import x` depends on gdmd.toy (its __init__), not on x.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles_among_modules() -> None:
    # Packages import their own submodules (``gdmd/__init__`` is tiny); cycles that pass only
    # through a package's __init__ are not what this guards against. A cycle is how one part
    # starts to depend on everything: the toy grammar once imported the metrics that import
    # the checker that imports the grammar.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in _runtime_graph().items()}
    assert _cycles(graph) == []


def test_the_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
