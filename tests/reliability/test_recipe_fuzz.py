"""Fuzzed recipes through ``gdmd validate``: valid, or exit 2 naming the problem; never a
traceback. The full count is ``benchmarks/reliability.py fuzz`` (docs/reliability.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from gdmd.cli import make_app
from gdmd.manager import GdmdPluginManager, build_plugin_manager

from .fuzzing import Case, Outcomes, cases, check_case


@pytest.fixture(scope="module")
def pm() -> GdmdPluginManager:
    return build_plugin_manager(load_entrypoints=False)


def test_fuzzed_recipes_validate_or_exit_2(pm: GdmdPluginManager, tmp_path: Path) -> None:
    app = make_app(pm)
    outcomes = Outcomes()

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases())
    def check(case: Case) -> None:
        failure = check_case(case, tmp_path, app, pm, outcomes)
        assert failure is None, failure

    check()
    # The sample reaches both outcomes, so the check is not vacuous.
    assert outcomes.counts["refused"] > 50
    assert outcomes.counts["valid"] > 0


@pytest.mark.parametrize("expression", ["#x=1", " # =1"])
def test_set_whose_key_is_a_comment_is_refused(
    pm: GdmdPluginManager, expression: str
) -> None:
    # Found by the fuzzer: the key parsed to no key at all and crashed with a ValueError.
    from typer.testing import CliRunner

    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "tiny_cpu.toml")
    result = CliRunner().invoke(make_app(pm), ["validate", recipe, f"--set={expression}"])
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, ValueError)
    key = expression.partition("=")[0].strip()
    assert f"--set {expression}: {key!r} is not a valid dotted key" in result.output


def test_a_reward_table_with_an_empty_label_is_refused(
    pm: GdmdPluginManager, tmp_path: Path
) -> None:
    # Found by the fuzzer: [reward.""] defaulted its kind to "" and tripped an assertion.
    from typer.testing import CliRunner

    recipe = tmp_path / "x.toml"
    recipe.write_text(
        '[teacher]\nkind = "tiny-unet"\n[prompts]\nkind = "list"\nprompts = ["a"]\n'
        '[reward.""]\nweight = 2.0\n'
    )
    result = CliRunner().invoke(make_app(pm), ["validate", str(recipe)])
    assert result.exit_code == 2, result.output
    assert f'{recipe}: [reward] "": a reward table needs a label, e.g. [reward.clip]' in (
        result.output
    )
