"""A broken third-party plugin is named in a clear error and leaves the rest of gdmd working.
The counted figure is ``benchmarks/reliability.py plugins`` (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .faulty_plugins import FAULTS, PLUGIN, REWARD, Fault, check_fault, installed


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name.replace(" ", "-") for f in FAULTS])
def test_faulty_plugin_is_named_and_contained(fault: Fault, tmp_path: Path) -> None:
    assert check_fault(fault, tmp_path) == []


def test_failed_plugins_are_recorded_with_their_error() -> None:
    import_fault, twice = FAULTS[0], FAULTS[-1]
    with installed(import_fault) as pm:
        (failure,) = pm.failures
        assert failure.plugin == PLUGIN
        assert failure.error == "ModuleNotFoundError: No module named 'gdmd_faulty_backend'"
        assert "tiny-unet" in pm.registries.models
    with installed(twice) as pm:
        (failure,) = pm.failures
        assert failure.plugin == "gdmd-faulty-too"
        assert pm.registries.get("reward", REWARD).plugin == PLUGIN
