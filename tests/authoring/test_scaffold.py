"""``gdmd plugin new``: the generated packages install, pass their own tests, and are listed.

The distribution test builds all three kinds with pip (``--no-index --no-build-isolation``,
so no network) into a temporary ``--target`` directory, never into the venv, as
tests/foundation/test_distributions.py does with its fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from gdmd import PLUGIN_API_VERSION, __version__
from gdmd.cli import make_app
from gdmd.manager import GdmdPluginManager
from gdmd.scaffold import ScaffoldError, scaffold_plugin

KINDS = ("reward", "target", "model")


def invoke(pm: GdmdPluginManager, *args: str) -> object:
    return CliRunner().invoke(make_app(pm), list(args), env={"COLUMNS": "200"})


def test_new_writes_the_package_and_says_what_it_wrote(
    gdmd_pm: GdmdPluginManager, tmp_path: Path
) -> None:
    result = invoke(
        gdmd_pm, "plugin", "new", "gdmd-aesthetic", "--kind", "reward", "--dir", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    root = tmp_path / "gdmd-aesthetic"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "gdmd_aesthetic/__init__.py",
        "gdmd_aesthetic/reward.py",
        "pyproject.toml",
        "tests/test_gdmd_aesthetic.py",
    ]
    assert all(name in result.stdout for name in files)
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == "gdmd-aesthetic"
    assert project["project"]["dependencies"] == [f"gdmd>={__version__}"]
    assert project["project"]["entry-points"]["gdmd"] == {"aesthetic": "gdmd_aesthetic"}
    plugin = (root / "gdmd_aesthetic" / "__init__.py").read_text(encoding="utf-8")
    assert f"GDMD_PLUGIN_API = {PLUGIN_API_VERSION}\n" in plugin
    assert "class AestheticConfig(ComponentConfig):" in plugin
    assert "import torch" not in plugin
    test = (root / "tests" / "test_gdmd_aesthetic.py").read_text(encoding="utf-8")
    assert "assert_reward_contract(build(gdmd_pm, gdmd_build_context))" in test
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "[reward.aesthetic]\nweight = 1.0\ntarget = 0.5" in readme


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gdmd aesthetic", '"gdmd aesthetic" is not a valid distribution name'),
        ("_gdmd-x", '"_gdmd-x" is not a valid distribution name'),
        ("gdmd-x-", '"gdmd-x-" is not a valid distribution name'),
        ("GDMD", '"gdmd" is gdmd\'s own name'),
        ("3d-reward", 'would give the module name "3d_reward", which is not a Python identifier'),
        ("class", 'would give the module name "class", which is not a Python identifier'),
    ],
)
def test_a_bad_name_is_an_error_with_exit_code_2(
    gdmd_pm: GdmdPluginManager, tmp_path: Path, name: str, message: str
) -> None:
    result = invoke(gdmd_pm, "plugin", "new", name, "--kind", "reward", "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_an_error_and_is_left_alone(
    gdmd_pm: GdmdPluginManager, tmp_path: Path
) -> None:
    (tmp_path / "gdmd-mine").mkdir()
    (tmp_path / "gdmd-mine" / "keep.txt").write_text("mine", encoding="utf-8")
    result = invoke(
        gdmd_pm, "plugin", "new", "gdmd-mine", "--kind", "target", "--dir", str(tmp_path)
    )
    assert result.exit_code == 2
    assert f"{tmp_path / 'gdmd-mine'} already exists; choose another name or --dir" in result.stderr
    assert [p.name for p in (tmp_path / "gdmd-mine").iterdir()] == ["keep.txt"]


def test_an_unknown_kind_is_a_usage_error(gdmd_pm: GdmdPluginManager, tmp_path: Path) -> None:
    result = invoke(gdmd_pm, "plugin", "new", "gdmd-x", "--kind", "decoder", "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert "'decoder' is not one of" in result.output


def test_names_that_start_with_a_digit_after_the_prefix_still_make_classes(
    tmp_path: Path,
) -> None:
    scaffold_plugin("gdmd-3d", "model", tmp_path)
    plugin = (tmp_path / "gdmd-3d" / "gdmd_3d" / "__init__.py").read_text(encoding="utf-8")
    assert "class Gdmd3dConfig(ComponentConfig):" in plugin
    with pytest.raises(ScaffoldError) as caught:
        scaffold_plugin("gdmd-3d", "model", tmp_path)
    assert caught.value.exit_code == 2


def test_generated_packages_install_pass_their_tests_and_are_listed(tmp_path: Path) -> None:
    sources = []
    for kind in KINDS:
        scaffold_plugin(f"gdmd-my-{kind}", kind, tmp_path)
        sources.append(str(tmp_path / f"gdmd-my-{kind}"))
    site = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            *sources,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if k != "GDMD_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))

    # The packages' own tests, run from outside their source folders so they import the
    # installed copies.
    tests = [str(tmp_path / f"gdmd-my-{kind}" / "tests") for kind in KINDS]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "9 passed" in run.stdout

    script = Path(sys.executable).parent / "gdmd"
    listing = subprocess.run(
        [str(script), "list-plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    found = {
        c["name"]: (c["kind"], c["plugin"], c["distribution"], c["version"])
        for c in json.loads(listing.stdout)["components"]
    }
    for kind in KINDS:
        assert found[f"my-{kind}"] == (kind, f"my-{kind}", f"gdmd-my-{kind}", "0.1.0")
    assert json.loads(listing.stdout)["failures"] == []
