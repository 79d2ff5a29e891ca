"""Fixtures of the flux2 tests: the tiny pipeline of :mod:`flux2_tiny`, saved once."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any hub import: a failed lookup must not wait on DNS

from pathlib import Path

import pytest
from flux2_tiny import save_tiny_flux2_pipeline


@pytest.fixture(scope="session")
def flux2_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny FLUX.2 [klein] pipeline: 16 px images, 16 x 4 x 4 patchified latents."""
    pytest.importorskip("diffusers")
    return save_tiny_flux2_pipeline(tmp_path_factory.mktemp("tiny-flux2"))
