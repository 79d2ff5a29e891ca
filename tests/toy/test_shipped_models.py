"""The toy models gdmd ships: the defaults resolve to them, and their rebuild path works."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gdmd.toy import alignment, evaluator
from gdmd.toy.cache import ENTRY_FILE, cache_key
from gdmd.toy.shipped import SHIPPED_ROOT, shipped_entry, shipped_or_cached
from gdmd.toy.teacher import ToyTeacherConfig, teacher_cache_settings

BUILDER = Path(__file__).resolve().parents[2] / "benchmarks" / "build_toy_models.py"

DEFAULTS = {
    "toy-teacher": teacher_cache_settings(ToyTeacherConfig()),
    "toy-alignment": alignment.alignment_cache_settings(),
    "toy-evaluator": evaluator.evaluator_cache_settings(),
}


def _builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_toy_models", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_toy_models"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", sorted(DEFAULTS))
def test_default_settings_resolve_to_a_shipped_entry(kind: str) -> None:
    # A default recipe trains nothing: each default model is in the package.
    entry = shipped_entry(kind, DEFAULTS[kind])
    assert entry is not None, f"no shipped {kind} for the default settings"
    assert json.loads((entry / ENTRY_FILE).read_text())["config"] == json.loads(
        json.dumps(DEFAULTS[kind])
    )
    assert any(entry.glob("*.safetensors"))
    # Nothing in a shipped entry is a pickle.
    assert not [p for p in entry.rglob("*") if p.suffix in {".pt", ".pth", ".bin", ".pkl"}]


def test_every_shipped_entry_is_named_by_its_own_settings() -> None:
    entries = [p for p in SHIPPED_ROOT.glob("*/*") if p.is_dir()]
    assert {p.parent.name for p in entries} == set(DEFAULTS)
    for entry in entries:
        description = json.loads((entry / ENTRY_FILE).read_text())
        assert entry.name == cache_key(description["kind"], description["config"])


def test_shipped_models_load() -> None:
    from gdmd.models.tiny import TinyDiffusionModel

    entry = shipped_entry("toy-teacher", DEFAULTS["toy-teacher"])
    teacher = TinyDiffusionModel.from_pretrained(entry)
    assert sum(p.numel() for p in teacher.parameters()) > 1_000_000
    reward = alignment.load_or_train_alignment_model()
    assert reward.arch == alignment.AlignmentArchitecture()
    assert evaluator.load_or_train_evaluator().arch == evaluator.EvaluatorArchitecture()


def test_switching_shipped_models_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GDMD_SHIPPED_MODELS", "0")
    assert shipped_entry("toy-teacher", DEFAULTS["toy-teacher"]) is None
    built: list[Path] = []

    def build(directory: Path) -> None:
        built.append(directory)
        (directory / "weights.txt").write_text("trained here")

    entry = shipped_or_cached("toy-teacher", DEFAULTS["toy-teacher"], build, root=tmp_path)
    assert built and (entry / "weights.txt").read_text() == "trained here"
    assert entry.parent.parent == tmp_path


def test_rebuild_command_at_test_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out, cache = tmp_path / "shipped", tmp_path / "cache"
    builder = _builder()
    monkeypatch.setenv("GDMD_SHIPPED_MODELS", "0")  # restored after the test; build() sets it
    entries = builder.build(out, cache, teacher_steps=2, alignment_steps=2, evaluator_steps=2)
    monkeypatch.setenv("GDMD_SHIPPED_MODELS", "1")
    assert [e.parent.name for e in entries] == ["toy-teacher", "toy-alignment", "toy-evaluator"]
    small = {
        "toy-teacher": teacher_cache_settings(ToyTeacherConfig(train_steps=2)),
        "toy-alignment": alignment.alignment_cache_settings(2),
        "toy-evaluator": evaluator.evaluator_cache_settings(2),
    }
    for kind, settings in small.items():
        found = shipped_entry(kind, settings, root=out)
        assert found is not None and found in entries
    # The rebuilt entries are what a lookup would load in place of training.
    trained: list[Path] = []
    path = shipped_or_cached(
        "toy-alignment", small["toy-alignment"], trained.append, root=cache, shipped_root=out
    )
    assert path == out / "toy-alignment" / cache_key("toy-alignment", small["toy-alignment"])
    assert not trained
    assert json.loads((path / "ranking.json").read_text())
