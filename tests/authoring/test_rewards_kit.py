"""The reward kit (``gdmd.rewards``) is public API: named, documented, importable cheaply."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import gdmd.rewards

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_every_public_name_is_the_object_of_its_module() -> None:
    assert sorted(gdmd.rewards.__all__) == sorted(gdmd.rewards._HOMES)
    for name, home in gdmd.rewards._HOMES.items():
        module = importlib.import_module(f"gdmd.rewards.{home}")
        assert getattr(gdmd.rewards, name) is getattr(module, name), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        gdmd.rewards.no_such_helper  # noqa: B018 - the lookup is the test
    except AttributeError as err:
        assert "no attribute 'no_such_helper'" in str(err)
    else:
        raise AssertionError("gdmd.rewards.no_such_helper resolved")


def test_importing_the_kit_imports_no_torch() -> None:
    # Built-in rewards register from gdmd.rewards.* at plugin listing; it must stay cheap.
    code = "import sys, gdmd.rewards; print(sorted(m for m in sys.modules if m == 'torch'))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"


def test_docs_architecture_names_every_public_name() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [name for name in gdmd.rewards.__all__ if f"`{name}`" not in text]
    assert missing == []


def test_the_first_party_plugins_use_only_the_kits_public_names() -> None:
    used = {}
    for path in sorted((ROOT / "plugins").glob("*/gdmd_*/*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and re.fullmatch(
                r"gdmd\.rewards(\.\w+)?", node.module or ""
            ):
                for alias in node.names:
                    used[alias.name] = f"{path.relative_to(ROOT)}:{node.lineno}"
    assert used, "no plugin imports the reward kit: the check checks nothing"
    private = {name: where for name, where in used.items() if name not in gdmd.rewards.__all__}
    assert private == {}
