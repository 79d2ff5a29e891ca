"""``gdmd list-plugins``: every component plugins registered, and plugins that failed."""

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gdmd.cli.common import console, plugin_manager

if TYPE_CHECKING:
    from gdmd.manager import GdmdPluginManager


def plugin_listing(pm: "GdmdPluginManager") -> dict[str, list[dict[str, Any]]]:
    """What ``gdmd list-plugins --json`` prints: every component and every failed plugin,
    in a stable order (kind, then name; failures by plugin name)."""
    components = [
        {
            "name": spec.name,
            "kind": spec.kind,
            "roles": list(spec.roles),
            "plugin": spec.plugin,
            "distribution": spec.distribution,
            "version": spec.version,
            "summary": spec.summary,
        }
        for spec in pm.registries
    ]
    failures = [
        {
            "plugin": failure.plugin,
            "distribution": failure.distribution,
            "version": failure.version,
            "error": failure.error,
        }
        for failure in sorted(pm.failures, key=lambda f: (f.plugin, f.error))
    ]
    return {"components": components, "failures": failures}


def list_plugins(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: components and failures.")
    ] = False,
) -> None:
    """List every component plugins registered, and plugins that failed to load.

    Components are models (with the roles they can fill), rewards, targets and prompt
    sources: the complete vocabulary of a recipe's kind keys.
    """
    listing = plugin_listing(plugin_manager(ctx))
    if as_json:
        typer.echo(json.dumps(listing, indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gdmd components", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("kind", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("summary", overflow="fold", ratio=1)
    for item in listing["components"]:
        kind = item["kind"]
        if item["roles"]:
            kind += f" ({', '.join(r[0] for r in item['roles'])})"
        origin = (
            f"{item['distribution']} {item['version'] or ''}".strip()
            if item["distribution"]
            else item["plugin"]
        )
        table.add_row(item["name"], kind, origin, item["summary"])
    Console(highlight=False).print(table)
    if listing["failures"]:
        out = console()
        out.print("[bold red]plugins that failed to load:[/]")
        for failure in listing["failures"]:
            origin = " ".join(p for p in (failure["distribution"], failure["version"]) if p)
            out.print(
                f"  {failure['plugin']}" + (f" ({origin})" if origin else "") + ": "
                f"{failure['error']}",
                markup=False,
            )
