"""``gdmd plugin new``: write a plugin distribution that works and tests itself as generated.

``gdmd plugin new gdmd-aesthetic --kind reward`` writes::

    gdmd-aesthetic/
      pyproject.toml            the distribution, with its [project.entry-points.gdmd]
      README.md                 install, test, use in a recipe, publish
      gdmd_aesthetic/
        __init__.py             the plugin: config model, factory, hook (imports no torch)
        reward.py               the component itself (imports torch)
      tests/test_gdmd_aesthetic.py   the contract checker and a test of the behaviour

The plugin module and the component live in two files so that the module gdmd imports to
list plugins stays cheap, as :mod:`gdmd.hookspecs` asks.

The templates are real packages shipped with gdmd, one per kind, under ``templates/<kind>/``:
a working plugin named ``gdmd-<kind>-template`` (module ``gdmd_<kind>_template``, component
``<kind>-template``, classes ``<Kind>Template<Kind>`` and ``<Kind>TemplateConfig``), which
ruff and mypy read as code. Generating a package copies one with those names replaced and the
placeholder ``GDMD_VERSION`` set to this gdmd's version. Imports no torch.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gdmd import __version__
from gdmd.errors import GdmdError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["PluginKind", "ScaffoldError", "plugin_app", "scaffold_plugin"]

# PEP 508 distribution names.
_DISTRIBUTION_NAME = re.compile(r"[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9]", re.IGNORECASE)

#: Stands for the gdmd version in the templates' requirement ``gdmd>=GDMD_VERSION``.
VERSION_PLACEHOLDER = "GDMD_VERSION"


class ScaffoldError(GdmdError):
    """``gdmd plugin new`` cannot write the package: a bad name or an existing folder."""

    exit_code = 2


class PluginKind(str, Enum):
    """What the scaffolded plugin registers."""

    reward = "reward"
    model = "model"
    target = "target"


@dataclass(frozen=True)
class _Names:
    """Every name a package uses, derived from the distribution name."""

    distribution: str  # gdmd-aesthetic, as given
    module: str  # gdmd_aesthetic
    component: str  # aesthetic: the entry-point name and the registered name
    camel: str  # Aesthetic; classes are <camel>Config and <camel><Kind>

    @classmethod
    def parse(cls, name: str) -> _Names:
        if not _DISTRIBUTION_NAME.fullmatch(name):
            raise ScaffoldError(
                f'"{name}" is not a valid distribution name: use letters, digits, "-", "_" and '
                '".", starting and ending with a letter or digit (e.g. gdmd-aesthetic)'
            )
        normalised = re.sub(r"[-_.]+", "-", name).lower()
        if normalised == "gdmd":
            raise ScaffoldError('"gdmd" is gdmd\'s own name; call the plugin gdmd-<something>')
        module = normalised.replace("-", "_")
        if not module.isidentifier() or keyword.iskeyword(module):
            raise ScaffoldError(
                f'"{name}" would give the module name "{module}", which is not a Python '
                "identifier; start the name with a letter"
            )
        component = normalised.removeprefix("gdmd-")
        camel = "".join(part.capitalize() for part in component.split("-"))
        if not camel[0].isalpha():
            camel = "Gdmd" + camel
        return cls(name, module, component, camel)


def template_names(kind: PluginKind | str) -> _Names:
    """The names the template of ``kind`` is written with (``gdmd-reward-template``, ...)."""
    return _Names.parse(f"gdmd-{PluginKind(kind).value}-template")


def template_files(kind: PluginKind | str) -> list[str]:
    """The files of the template of ``kind``, relative to its folder, in the order written."""
    kind = PluginKind(kind)
    module = template_names(kind).module
    return [
        "pyproject.toml",
        "README.md",
        f"{module}/__init__.py",
        f"{module}/{kind.value}.py",
        f"tests/test_{module}.py",
    ]


def template_folder(kind: PluginKind | str) -> Traversable:
    """The folder of the template of ``kind``, inside the installed gdmd."""
    return resources.files(__name__) / "templates" / PluginKind(kind).value


def render(text: str, kind: PluginKind | str, names: _Names) -> str:
    """``text`` of the template of ``kind`` with its names replaced by ``names``."""
    template = template_names(kind)
    replacements = {
        template.distribution: names.distribution,
        template.module: names.module,
        template.component: names.component,
        template.camel: names.camel,
        VERSION_PLACEHOLDER: __version__,
    }
    # One pass, longest first: gdmd-reward-template is replaced whole, never as
    # "gdmd-" + the component; replaced text is never scanned again.
    pattern = re.compile("|".join(re.escape(k) for k in sorted(replacements, key=len)[::-1]))
    return pattern.sub(lambda match: replacements[match.group(0)], text)


def scaffold_plugin(name: str, kind: PluginKind | str, parent: str | Path) -> list[Path]:
    """Write the plugin distribution ``name`` registering one ``kind`` into ``parent/name``.

    Returns the files written. Raises :class:`ScaffoldError` for a name that is not a valid
    distribution name (or would not give a Python module name) and for an existing folder.
    """
    kind = PluginKind(kind)
    names = _Names.parse(name)
    parent = Path(parent)
    if parent.exists() and not parent.is_dir():
        raise ScaffoldError(f"--dir {parent} is not a folder")
    root = parent / name
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another name or --dir")
    folder = template_folder(kind)
    written = []
    for relative in template_files(kind):
        text = folder.joinpath(*relative.split("/")).read_text(encoding="utf-8")
        path = root / render(relative, kind, names)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(text, kind, names), encoding="utf-8")
        written.append(path)
    return written


def plugin_app() -> typer.Typer:
    """The ``gdmd plugin`` command group."""
    app = typer.Typer(no_args_is_help=True, help="Tools for plugin authors.")

    @app.command("new")
    def new(
        name: Annotated[
            str, typer.Argument(help="Distribution name of the plugin, e.g. gdmd-aesthetic.")
        ],
        kind: Annotated[PluginKind, typer.Option("--kind", help="What the plugin registers.")],
        directory: Annotated[
            Path,
            typer.Option("--dir", help="Folder to create the package in."),
        ] = Path("."),
    ) -> None:
        """Write a plugin package whose tests pass as generated.

        The package has a pyproject.toml with the gdmd entry point, the plugin module, the
        component, a README and a test that runs gdmd's contract checker. Docs:
        docs/plugin-tutorial.md.
        """
        from rich.console import Console
        from rich.markup import escape

        written = scaffold_plugin(name, kind, directory)
        root = directory / name
        console = Console(highlight=False, soft_wrap=True)
        console.print(f"[green]created[/] {escape(str(root))} ({kind.value} plugin):")
        for path in written:
            console.print(f"  {escape(str(path.relative_to(root)))}")
        console.print(
            f'next: cd {escape(str(root))} && pip install -e ".\\[test]" && python -m pytest'
        )

    return app
