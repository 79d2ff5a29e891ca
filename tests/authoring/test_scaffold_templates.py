"""The templates of ``gdmd plugin new`` are real code, and generation replaces every name.

The templates live under gdmd/scaffold/templates/<kind>/ as a working plugin package named
``gdmd-<kind>-template``; tests/authoring/test_scaffold.py installs generated packages and
runs their tests.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import tomllib

from gdmd import PLUGIN_API_VERSION, __version__
from gdmd.scaffold import (
    VERSION_PLACEHOLDER,
    PluginKind,
    scaffold_plugin,
    template_files,
    template_folder,
    template_names,
)

KINDS = [kind.value for kind in PluginKind]
TEMPLATES = Path(__file__).resolve().parents[2] / "gdmd" / "scaffold" / "templates"


def placeholders(kind: str) -> list[str]:
    names = template_names(kind)
    return [names.distribution, names.module, names.component, names.camel, VERSION_PLACEHOLDER]


def files_under(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)).replace("\\", "/")
        for p in root.rglob("*")
        # Caches that tools leave in a working tree are not part of a template.
        if p.is_file() and not any(part.startswith((".", "__pycache__")) for part in p.parts)
    )


def test_the_template_names_are_python_and_distribution_names() -> None:
    names = template_names("reward")
    assert (names.distribution, names.module, names.component, names.camel) == (
        "gdmd-reward-template",
        "gdmd_reward_template",
        "reward-template",
        "RewardTemplate",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_each_template_holds_exactly_the_files_generation_writes(kind: str) -> None:
    # A file in the folder that generation does not list would never reach a user.
    assert files_under(TEMPLATES / kind) == sorted(template_files(kind))
    folder = template_folder(kind)
    assert all(folder.joinpath(*name.split("/")).is_file() for name in template_files(kind))


def test_package_data_ships_every_template_file_that_is_not_a_module() -> None:
    # setuptools ships the .py files as modules; everything else only through package-data.
    # (A wheel built from this tree lists all 15 files: pip wheel --no-deps -w DIR .)
    pyproject = TEMPLATES.parents[2] / "pyproject.toml"
    globs = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]["gdmd"]
    for kind in KINDS:
        for name in template_files(kind):
            relative = PurePosixPath("scaffold", "templates", kind, name)
            shipped = name.endswith(".py") or any(
                relative.match(g) and len(relative.parts) == len(PurePosixPath(g).parts)
                for g in globs
            )
            assert shipped, f"gdmd/{relative} is not in [tool.setuptools.package-data]"


@pytest.mark.parametrize("kind", KINDS)
def test_the_templates_parse_as_python_and_toml(kind: str) -> None:
    root = TEMPLATES / kind
    for name in template_files(kind):
        text = (root / name).read_text(encoding="utf-8")
        if name.endswith(".py"):
            ast.parse(text, filename=name)
        elif name.endswith(".toml"):
            tomllib.loads(text)
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    names = template_names(kind)
    assert project["project"]["name"] == names.distribution
    assert project["project"]["entry-points"]["gdmd"] == {names.component: names.module}
    assert project["project"]["dependencies"] == [f"gdmd>={VERSION_PLACEHOLDER}"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_templates_are_written_for_this_plugin_api(kind: str) -> None:
    # A new plugin API means the templates need a look: this fails until someone gives it.
    plugin = TEMPLATES / kind / template_names(kind).module / "__init__.py"
    tree = ast.parse(plugin.read_text(encoding="utf-8"))
    declared = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [ast.unparse(t) for t in node.targets] == ["GDMD_PLUGIN_API"]
    ]
    assert len(declared) == 1 and isinstance(declared[0], ast.Constant)
    assert declared[0].value == PLUGIN_API_VERSION


def test_the_pyprojects_differ_only_in_the_kind() -> None:
    texts = {
        kind: (TEMPLATES / kind / "pyproject.toml").read_text(encoding="utf-8").replace(kind, "K")
        for kind in KINDS
    }
    assert texts["reward"] == texts["target"] == texts["model"]


@pytest.mark.parametrize("kind", KINDS)
def test_generation_replaces_every_placeholder(kind: str, tmp_path: Path) -> None:
    written = scaffold_plugin("gdmd-night-sky", kind, tmp_path)
    root = tmp_path / "gdmd-night-sky"
    assert files_under(root) == sorted(
        name.replace(f"gdmd_{kind}_template", "gdmd_night_sky") for name in template_files(kind)
    )
    assert [p.relative_to(root).as_posix() for p in written][:2] == ["pyproject.toml", "README.md"]
    for path in written:
        text = path.read_text(encoding="utf-8")
        left = [p for p in placeholders(kind) if p in text or p in str(path)]
        assert left == [], f"{path.relative_to(root)} still holds {left}"
        if path.suffix == ".py":
            ast.parse(text, filename=str(path))
    plugin = (root / "gdmd_night_sky" / "__init__.py").read_text(encoding="utf-8")
    component = (root / "gdmd_night_sky" / f"{kind}.py").read_text(encoding="utf-8")
    assert re.search(rf"^class NightSky{kind.capitalize()}\b", component, re.M)
    assert "class NightSkyConfig(ComponentConfig):" in plugin
    assert f'"night-sky",\n        build_{kind},' in plugin
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["dependencies"] == [f"gdmd>={__version__}"]


@pytest.mark.parametrize("kind", KINDS)
def test_generating_the_templates_own_name_gives_the_template_back(
    kind: str, tmp_path: Path
) -> None:
    names = template_names(kind)
    scaffold_plugin(names.distribution, kind, tmp_path)
    for name in template_files(kind):
        template = (TEMPLATES / kind / name).read_text(encoding="utf-8")
        written = (tmp_path / names.distribution / name).read_text(encoding="utf-8")
        assert written == template.replace(VERSION_PLACEHOLDER, __version__), name


def test_a_name_that_holds_a_placeholder_is_not_replaced_twice(tmp_path: Path) -> None:
    # "gdmd-reward-template-x" holds the reward template's distribution name; replacement is
    # one pass, so the result is the target template with exactly this name in it.
    scaffold_plugin("gdmd-reward-template-x", "target", tmp_path)
    plugin = tmp_path / "gdmd-reward-template-x" / "gdmd_reward_template_x" / "__init__.py"
    text = plugin.read_text(encoding="utf-8")
    assert "class RewardTemplateXConfig(ComponentConfig):" in text
    assert '"reward-template-x",\n        build_target,' in text


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_ruff_finds_nothing_in_the_templates() -> None:
    # gdmd/scaffold/templates/ruff.toml lints them as the generated packages: gdmd third-party.
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(TEMPLATES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
