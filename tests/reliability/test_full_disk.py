"""A disk that fills up during a checkpoint: the run stops naming the checkpoint, the
previous one still loads, and the resume is exact. Counted trials: ``benchmarks/reliability.py
full-disk`` (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gdmd.manager import GdmdPluginManager, build_plugin_manager

from .full_disk import full_disk_trial, gdmd, writes_per_checkpoint


@pytest.fixture(scope="module")
def pm() -> GdmdPluginManager:
    return build_plugin_manager(load_entrypoints=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, pm: GdmdPluginManager) -> Path:
    out = tmp_path_factory.mktemp("reference")
    code, text, traceback = gdmd(pm, out, "reference")
    assert code == 0 and traceback is None, text
    return out / "reference"


@pytest.mark.parametrize("error", ["safetensors"])
def test_full_disk_during_a_checkpoint(
    pm: GdmdPluginManager, reference: Path, tmp_path: Path, error: str
) -> None:
    per_save = writes_per_checkpoint(reference)
    assert per_save >= 3  # student, critic and optimizer states: several files to fail in
    # The disk fills up in the middle of the second checkpoint; safetensors reports it as
    # its own error wrapping ENOSPC (benchmarks/reliability.py also raises a bare OSError).
    fail_at = per_save + 2
    problems, failed_step = full_disk_trial(pm, tmp_path, reference, "full", fail_at, error)
    assert failed_step == 2
    assert problems == []
