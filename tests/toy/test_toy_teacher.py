"""The toy teacher's cache key: what changes the trained weights, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from gdmd.toy.cache import cache_key, cached
from gdmd.toy.teacher import TEACHER_VERSION, ToyTeacherConfig, teacher_cache_settings


def test_key_follows_training_settings_not_the_load_path() -> None:
    base = ToyTeacherConfig()
    key = cache_key("toy-teacher", teacher_cache_settings(base))
    assert key == cache_key("toy-teacher", teacher_cache_settings(ToyTeacherConfig()))
    assert key == cache_key(
        "toy-teacher", teacher_cache_settings(ToyTeacherConfig(path="/elsewhere"))
    )
    for changed in (
        ToyTeacherConfig(train_steps=10),
        ToyTeacherConfig(batch_size=8),
        ToyTeacherConfig(lr=5e-4),
        ToyTeacherConfig(channels=(16, 32, 64)),
        ToyTeacherConfig(seed=1),
        ToyTeacherConfig(ema_decay=0.99),
        ToyTeacherConfig(categories=("single",)),
    ):
        assert cache_key("toy-teacher", teacher_cache_settings(changed)) != key, changed
    assert teacher_cache_settings(base)["version"] == TEACHER_VERSION


def test_a_cached_teacher_is_built_once(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(directory: Path) -> None:
        builds.append(directory)
        (directory / "model.safetensors").write_bytes(b"weights")

    settings = teacher_cache_settings(ToyTeacherConfig(train_steps=3))
    first = cached("toy-teacher", settings, build, root=tmp_path)
    second = cached("toy-teacher", settings, build, root=tmp_path)
    assert first == second and len(builds) == 1
    other = cached("toy-teacher", {**settings, "seed": 9}, build, root=tmp_path)
    assert other != first and len(builds) == 2


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        ToyTeacherConfig(ema_decay=1.0)


def test_unset_categories_leave_the_key_of_a_teacher_trained_on_everything() -> None:
    # The key every teacher trained before the option existed was cached under.
    assert "categories" not in teacher_cache_settings(ToyTeacherConfig())
    assert teacher_cache_settings(ToyTeacherConfig(categories=("counting", "single")))[
        "categories"
    ] == ["counting", "single"]
    with pytest.raises(ValueError, match="categories"):
        ToyTeacherConfig(categories=("shapes",))  # type: ignore[arg-type]
