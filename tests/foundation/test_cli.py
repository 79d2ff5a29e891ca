"""The command line, through Typer's test runner and (for import cost) a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import tomllib
import typer
from typer.testing import CliRunner

import gdmd
from gdmd.cli import make_app
from gdmd.errors import GdmdError
from gdmd.manager import build_plugin_manager

from .conftest import VALID_RECIPE, FakeEntryPoint

Write = Callable[..., str]

runner = CliRunner()


def invoke(pm: Any, *args: str) -> Any:
    return runner.invoke(make_app(pm), list(args), env={"COLUMNS": "200"})


def test_version() -> None:
    result = runner.invoke(make_app(), ["--version"])
    assert result.exit_code == 0 and result.stdout == f"gdmd {gdmd.__version__}\n"


def test_list_plugins_json(fake_pm: Any) -> None:
    result = invoke(fake_pm, "list-plugins", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["failures"] == []
    assert [(c["kind"], c["name"]) for c in listing["components"]] == [
        ("model", "fake-unet"),
        ("model", "teacher-only"),
        ("reward", "clip"),
        ("reward", "hpsv2"),
        ("reward", "toy-checker"),
        ("target", "dmd"),
        ("target", "gdmd"),
        ("prompts", "hf-dataset"),
        ("prompts", "list"),
        ("prompts", "table"),
        ("prompts", "text-file"),
        ("prompts", "toy"),
    ]
    assert listing["components"][1] == {
        "name": "teacher-only",
        "kind": "model",
        "roles": ["teacher"],
        "plugin": "fake-plugin",
        "distribution": None,
        "version": None,
        "summary": "Cannot be trained.",
    }
    builtin = listing["components"][-1]
    assert (builtin["plugin"], builtin["distribution"], builtin["version"]) == (
        "gdmd.builtins.prompts",
        "gdmd",
        gdmd.__version__,
    )


def test_list_plugins_table(fake_pm: Any) -> None:
    result = invoke(fake_pm, "list-plugins")
    assert result.exit_code == 0, result.output
    for word in ("fake-unet", "model (t, s, c)", "toy-checker", "text-file", "gdmd 0.1.0"):
        assert word in result.stdout
    assert "failed to load" not in result.stdout


def test_validate_ok(write_recipe: Write, fake_pm: Any) -> None:
    result = invoke(fake_pm, "validate", write_recipe(VALID_RECIPE), "--set", "student.steps=3")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 8 tables, target gdmd, teacher fake-unet, student ")
    assert "(3 steps)" in result.stdout


def test_validate_reports_every_problem(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(VALID_RECIPE.replace("steps = 10", "stpes = 10"))
    result = invoke(fake_pm, "validate", path, "--set", "target.kind=gdmdd")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: 2 problems in the recipe:\n"
        '  recipes/x.toml: [target] kind: unknown target "gdmdd"; did you mean "gdmd"? Known '
        "targets: dmd, gdmd (from --set target.kind=gdmdd)\n"
        '  recipes/x.toml: [train] stpes: unknown key (did you mean "steps"?)\n'
    )
    assert "Traceback" not in result.output


def test_validate_missing_file(write_recipe: Write, fake_pm: Any) -> None:
    result = invoke(fake_pm, "validate", "recipes/nope.toml")
    assert result.exit_code == 2
    assert result.stderr == "error: 1 problem in the recipe:\n  recipes/nope.toml: file not found\n"


def test_run_stops_at_recipe_errors(write_recipe: Write, fake_pm: Any) -> None:
    path = write_recipe(VALID_RECIPE)
    result = invoke(fake_pm, "run", path, "--set", "train.steps=0", "--dry-run")
    assert result.exit_code == 2
    assert "[train] steps: must be >= 1, got 0 (from --set train.steps=0)" in result.stderr


def test_schema_is_valid_json_schema(write_recipe: Write, fake_pm: Any) -> None:
    result = invoke(fake_pm, "schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    recipe = tomllib.loads(VALID_RECIPE)
    assert list(validator.iter_errors(recipe)) == []
    assert schema["properties"]["target"]["properties"]["kind"]["enum"] == ["dmd", "gdmd"]

    def errors(data: dict[str, Any]) -> list[str]:
        return [error.message for error in validator.iter_errors(data)]

    assert errors({**recipe, "trian": {}})
    assert errors({**recipe, "target": {"kind": "gdmd", "vray": "t"}})
    assert errors({**recipe, "target": {"kind": "dmd", "k": 3}})
    assert errors({**recipe, "teacher": {"kind": "fake-unet", "width": 0}})
    assert errors({**recipe, "train": {"steps": "ten"}})
    assert errors({**recipe, "reward": {"clip": {"kind": "clip", "scale": -1}}})
    assert not errors({**recipe, "target": {"k": 3, "kind": "gdmd", "vary": "both"}})


def test_the_real_schema_command_and_default_manager() -> None:
    result = runner.invoke(make_app(), ["schema"])
    assert result.exit_code == 0, result.output
    jsonschema.Draft202012Validator.check_schema(json.loads(result.stdout))


# -- plugin commands and error handling -----------------------------------------------------


class CommandsPlugin:
    @gdmd.hookimpl
    def gdmd_register_commands(self, app: typer.Typer) -> None:
        @app.command()
        def hello(name: str = "world") -> None:
            """Say hello."""
            typer.echo(f"hello {name}")

        @app.command()
        def fail() -> None:
            """Fail the way a user's mistake does."""
            raise GdmdError("the thing is wrong")

        @app.command()
        def interrupt() -> None:
            """Behave like Ctrl-C."""
            raise KeyboardInterrupt

        @app.command("validate")
        def shadow() -> None:
            """Loses to the built-in command of the same name."""
            typer.echo("shadowed")


def test_plugins_add_commands(fake_pm: Any) -> None:
    fake_pm.register(CommandsPlugin(), name="commands")
    app = make_app(fake_pm)
    assert runner.invoke(app, ["hello", "--name", "gdmd"]).stdout == "hello gdmd\n"
    help_text = runner.invoke(app, ["--help"]).stdout
    assert "hello" in help_text and "list-plugins" in help_text


def test_gdmd_errors_print_a_message_and_exit_code(fake_pm: Any) -> None:
    fake_pm.register(CommandsPlugin(), name="commands")
    result = invoke(fake_pm, "fail")
    assert result.exit_code == 1
    assert result.stderr == "error: the thing is wrong\n"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert invoke(fake_pm, "interrupt").exit_code == 130


def test_builtin_commands_win(write_recipe: Write, fake_pm: Any) -> None:
    fake_pm.register(CommandsPlugin(), name="commands")
    result = invoke(fake_pm, "validate", write_recipe(VALID_RECIPE))
    assert result.exit_code == 0 and result.stdout.startswith("ok: ")


class BrokenCommands:
    @gdmd.hookimpl
    def gdmd_register_commands(self, app: typer.Typer) -> None:
        raise RuntimeError("no commands today")


def test_a_plugin_whose_commands_fail_does_not_brick_the_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "gdmd.manager.entry_points", lambda group: [FakeEntryPoint("cmds", BrokenCommands())]
    )
    pm = build_plugin_manager(builtins=["gdmd.builtins.prompts"])
    result = runner.invoke(make_app(pm), ["--help"])
    assert result.exit_code == 0 and "list-plugins" in result.stdout
    assert result.stderr == (
        'warning: commands missing: plugin "cmds": RuntimeError: no commands today\n'
    )
    listing = json.loads(runner.invoke(make_app(pm), ["list-plugins", "--json"]).stdout)
    assert listing["failures"][0]["error"] == "RuntimeError: no commands today"


# -- import cost -----------------------------------------------------------------------------

HEAVY = ("torch", "diffusers", "transformers", "accelerate")


@pytest.mark.parametrize("argv", [["--help"], ["list-plugins"], ["list-plugins", "--json"]])
def test_cli_does_not_import_heavy_libraries(argv: list[str]) -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        from gdmd.cli import main
        sys.argv = ["gdmd", *{argv!r}]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print("HEAVY=" + json.dumps(heavy))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY=[]"
