"""The train-on-first-use cache: keyed by config, atomic, reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from gdmd.toy.cache import CACHE_VERSION, cache_key, cache_root, cached, is_complete


class Builder:
    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, directory: Path) -> None:
        self.calls += 1
        assert directory.is_dir() and not any(directory.iterdir())
        (directory / "weights.bin").write_text(f"built {self.calls}")
        if self.fail:
            raise RuntimeError("crash in the middle of a build")


def test_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GDMD_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("GDMD_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "gdmd"


def test_entries_are_keyed_by_kind_and_config_and_reused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GDMD_CACHE_DIR", str(tmp_path))
    build = Builder()
    first = cached("toy-teacher", {"steps": 10, "seed": 0}, build)
    assert build.calls == 1 and is_complete(first)
    assert first.parent == tmp_path / "toy-teacher"
    assert (first / "weights.bin").read_text() == "built 1"
    again = cached("toy-teacher", {"seed": 0, "steps": 10}, build)  # key order does not matter
    assert again == first and build.calls == 1
    other = cached("toy-teacher", {"steps": 11, "seed": 0}, build)
    assert other != first and build.calls == 2
    assert cached("toy-reward", {"steps": 10, "seed": 0}, build).parent.name == "toy-reward"
    assert cache_key("a", {"x": 1}) != cache_key("b", {"x": 1})
    assert CACHE_VERSION in (first / "cache-entry.json").read_text()


def test_a_crash_in_build_leaves_no_entry(tmp_path: Path) -> None:
    failing = Builder(fail=True)
    with pytest.raises(RuntimeError, match="crash"):
        cached("toy-teacher", {"steps": 1}, failing, root=tmp_path)
    assert list((tmp_path / "toy-teacher").iterdir()) == []
    build = Builder()
    entry = cached("toy-teacher", {"steps": 1}, build, root=tmp_path)
    assert build.calls == 1 and (entry / "weights.bin").read_text() == "built 1"


def test_an_incomplete_directory_is_not_an_entry(tmp_path: Path) -> None:
    entry = tmp_path / "toy-teacher" / cache_key("toy-teacher", {"steps": 1})
    entry.mkdir(parents=True)
    (entry / "half-written.bin").write_text("?")
    build = Builder()
    assert cached("toy-teacher", {"steps": 1}, build, root=tmp_path) == entry
    assert build.calls == 1 and not (entry / "half-written.bin").exists()


def test_kind_must_be_a_simple_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="simple lower-case name"):
        cached("../escape", {}, Builder(), root=tmp_path)
