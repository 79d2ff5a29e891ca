"""docs/hooks.md states every hook's exact signature; it fails here when hookspecs change."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

import gdmd
from gdmd import hookspecs
from gdmd.registry import Register

PAGE = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def render(name: str, function: Callable[..., object], skip: int = 0) -> str:
    """``name(param: annotation = default, *, ...) -> return``, as the page writes it."""
    signature = inspect.signature(function)
    parts: list[str] = []
    for parameter in list(signature.parameters.values())[skip:]:
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        text = parameter.name
        if parameter.annotation is not parameter.empty:
            text += f": {_annotation(parameter.annotation)}"
        if parameter.default is not parameter.empty:
            text += f" = {parameter.default!r}"
        parts.append(text)
    return f"{name}({', '.join(parts)}) -> {_annotation(signature.return_annotation)}"


def _annotation(annotation: object) -> str:
    # hookspecs uses postponed annotations, so these are the strings written in the source.
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def hooks() -> dict[str, str]:
    return {
        name: render(name, getattr(hookspecs, name))
        for name in dir(hookspecs)
        if name.startswith("gdmd_")
    }


def test_the_page_documents_exactly_the_hooks_with_their_signatures() -> None:
    text = PAGE.read_text(encoding="utf-8")
    documented = re.findall(r"^### `(gdmd_\w+\(.*\).*)`$", text, re.M)
    assert sorted(documented) == sorted(hooks().values())


def test_the_page_states_the_register_signature() -> None:
    signature = render("register", Register.__call__, skip=1)
    assert f"```python\n{signature}\n```" in PAGE.read_text(encoding="utf-8")


def test_the_current_plugin_api_row_lists_every_hook() -> None:
    text = PAGE.read_text(encoding="utf-8")
    row = re.search(rf"^\| {gdmd.PLUGIN_API_VERSION} \|[^|]*\|(.*)\|$", text, re.M)
    assert row, f"docs/hooks.md has no row for plugin API {gdmd.PLUGIN_API_VERSION}"
    assert sorted(re.findall(r"`(gdmd_\w+)`", row.group(1))) == sorted(hooks())


def test_the_rendering_catches_a_changed_signature() -> None:
    def gdmd_register_rewards(register: Register, device: str = "cpu") -> None:
        """A hook that gained a parameter."""

    changed = render("gdmd_register_rewards", gdmd_register_rewards)
    assert changed == "gdmd_register_rewards(register: Register, device: str = 'cpu') -> None"
    assert changed != hooks()["gdmd_register_rewards"]
