"""docs/plugin-tutorial.md works: its reward, plugin module and test, put into the package
``gdmd plugin new`` writes, pass the package's tests and gdmd's reward contract."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from gdmd.interfaces import BuildContext
from gdmd.manager import build_plugin_manager
from gdmd.scaffold import scaffold_plugin
from gdmd.testing import assert_reward_contract

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugin-tutorial.md"


def code_block(first_line: str) -> str:
    """The body of the ```python block of the tutorial that starts with ``first_line``."""
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(rf"```python\n({re.escape(first_line)}\n.*?)```", text, re.S)
    assert match, f"docs/plugin-tutorial.md has no python block starting {first_line!r}"
    return match.group(1)


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The scaffolded gdmd-sharpness with the tutorial's files in it, importable."""
    scaffold_plugin("gdmd-sharpness", "reward", tmp_path)
    root = tmp_path / "gdmd-sharpness"
    for name in ("reward.py", "__init__.py"):
        (root / "gdmd_sharpness" / name).write_text(code_block(f"# gdmd_sharpness/{name}"))
    test_file = root / "tests" / "test_gdmd_sharpness.py"
    generated = test_file.read_text(encoding="utf-8")
    replaced = code_block("# tests/test_gdmd_sharpness.py (the brightness test replaced)")
    start = generated.index("\n\ndef test_images_closer_to_the_target_brightness")
    test_file.write_text(generated[:start] + "\n\n" + replaced, encoding="utf-8")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for module in [m for m in sys.modules if m.split(".")[0] == "gdmd_sharpness"]:
        del sys.modules[module]


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tutorial_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def context() -> BuildContext:
    return BuildContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))


def test_the_tutorial_package_passes_its_tests(package: Path) -> None:
    tests = load(package / "tests" / "test_gdmd_sharpness.py")
    names = sorted(name for name in vars(tests) if name.startswith("test_"))
    assert names == [
        "test_a_checkerboard_is_sharper_than_a_flat_image",
        "test_keeps_the_reward_contract",
        "test_the_plugin_module_imports_no_torch",
    ]
    pm = build_plugin_manager(load_entrypoints=False)
    tests.test_keeps_the_reward_contract(pm, context())
    tests.test_a_checkerboard_is_sharper_than_a_flat_image(pm, context())
    tests.test_the_plugin_module_imports_no_torch()


def test_the_tutorial_reward_keeps_the_contract_at_other_sizes(package: Path) -> None:
    import gdmd_sharpness

    pm = build_plugin_manager(load_entrypoints=False)
    pm.register(gdmd_sharpness, name="sharpness")
    spec = pm.registries.rewards.get("sharpness")
    assert spec.summary.startswith("Fine detail")
    reward = spec.build({"scale": 2.0}, context())
    assert_reward_contract(reward, image_size=(12, 20), batch_size=4)
