"""Real plugin distributions, installed with pip and found through the ``gdmd`` entry points.

``tests/fixtures/gdmd-example-reward`` (a working reward plugin) and
``tests/fixtures/gdmd-broken-plugin`` (a module that raises on import) are installed once per
session with ``pip install --target`` into a temporary directory, never into the venv, so
other test runs and ``gdmd`` itself do not see them. The tests put that directory on the
path (``PYTHONPATH`` for subprocesses of the venv's ``gdmd`` script).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gdmd.manager import build_plugin_manager

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DISTRIBUTIONS = ("gdmd-example-reward", "gdmd-broken-plugin")
BROKEN_ERROR = "RuntimeError: gdmd-broken-plugin is broken on purpose (test fixture)"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding both fixture distributions, installed by pip."""
    root = tmp_path_factory.mktemp("plugin-distributions")
    sources = []
    for name in DISTRIBUTIONS:
        # Build from a copy so setuptools' build/ and egg-info stay out of the repository.
        shutil.copytree(FIXTURES / name, root / name)
        sources.append(str(root / name))
    site = root / "site"
    command = [
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
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        pytest.fail(f"installing the fixture plugins failed:\n{result.stdout}\n{result.stderr}")
    return site


def gdmd_command(
    site: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the venv's ``gdmd`` script with the fixture plugins on the path."""
    script = Path(sys.executable).parent / "gdmd"
    if not script.exists():
        pytest.fail(f"{script} is missing: install gdmd into the venv (make test does)")
    environ = {k: v for k, v in os.environ.items() if k != "GDMD_DISABLE_PLUGINS"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    environ["COLUMNS"] = "200"
    environ.update(env or {})
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=120, env=environ, check=False
    )


def test_list_plugins_shows_installed_and_failed_plugins(plugin_site: Path) -> None:
    result = gdmd_command(plugin_site, "list-plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    example = [c for c in listing["components"] if c["name"] == "example-brightness"]
    assert example == [
        {
            "name": "example-brightness",
            "kind": "reward",
            "roles": [],
            "plugin": "example",
            "distribution": "gdmd-example-reward",
            "version": "0.3.1",
            "summary": "Prefers images of a given mean brightness (example plugin).",
        }
    ]
    broken = [f for f in listing["failures"] if f["plugin"] == "broken"]
    assert broken == [
        {
            "plugin": "broken",
            "distribution": "gdmd-broken-plugin",
            "version": "0.0.1",
            "error": BROKEN_ERROR,
        }
    ]
    table = gdmd_command(plugin_site, "list-plugins")
    assert table.returncode == 0, table.stderr
    assert "example-brightness" in table.stdout and "gdmd-example-reward" in table.stdout
    assert "plugins that failed to load" in table.stdout and BROKEN_ERROR in table.stdout


def test_other_commands_still_work(plugin_site: Path, tmp_path: Path) -> None:
    assert gdmd_command(plugin_site, "--help").returncode == 0
    schema = gdmd_command(plugin_site, "schema")
    assert schema.returncode == 0, schema.stderr
    reward_kinds = json.loads(schema.stdout)["properties"]["reward"]["additionalProperties"]
    assert "example-brightness" in reward_kinds["properties"]["kind"]["enum"]

    recipe = tmp_path / "x.toml"
    recipe.write_text('[reward.aes]\nkind = "aesthetic-v9"\n', encoding="utf-8")
    result = gdmd_command(plugin_site, "validate", str(recipe))
    assert result.returncode == 2
    # The unknown reward's message names the plugin that failed to load: it is fatal only
    # to a recipe that needs it.
    assert 'unknown reward "aesthetic-v9"' in result.stderr
    assert f'plugin "broken" (gdmd-broken-plugin 0.0.1): {BROKEN_ERROR}' in result.stderr
    assert "Traceback" not in result.stderr


def test_disabled_plugins_are_skipped(plugin_site: Path) -> None:
    result = gdmd_command(
        plugin_site, "list-plugins", "--json", env={"GDMD_DISABLE_PLUGINS": "broken"}
    )
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [f for f in listing["failures"] if f["plugin"] == "broken"] == []
    assert any(c["name"] == "example-brightness" for c in listing["components"])


def test_listing_installed_plugins_does_not_import_torch(plugin_site: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        from gdmd.cli import main
        sys.argv = ["gdmd", "list-plugins", "--json"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code
        assert "gdmd_example_reward" in sys.modules
        print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
        """
    )
    path = os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_in_process_manager_sees_the_distribution(
    plugin_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.delenv("GDMD_DISABLE_PLUGINS", raising=False)
    pm = build_plugin_manager()
    spec = pm.registries.rewards.get("example-brightness")
    assert (spec.plugin, spec.distribution, spec.version) == (
        "example",
        "gdmd-example-reward",
        "0.3.1",
    )
    assert ("example", "gdmd-example-reward", "0.3.1") in pm.plugin_versions()
    assert [f.error for f in pm.failures if f.plugin == "broken"] == [BROKEN_ERROR]
    reward: Any = spec.build({"target": 0.25}, None)
    images = torch.full((2, 3, 4, 4), 0.75)
    assert torch.allclose(reward(images, ["a", "b"]), torch.tensor([-0.5, -0.5]))
