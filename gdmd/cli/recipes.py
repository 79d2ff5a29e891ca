"""``gdmd validate`` and ``gdmd schema``: recipes checked and described without building
anything."""

import json
from typing import Annotated

import typer

from gdmd.cli.common import SET_HELP, console, plugin_manager


def validate(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="The recipe (TOML) to check.")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)
    ] = None,
) -> None:
    """Check a recipe without building anything.

    Exits 0 when the recipe is valid, 2 with every problem listed otherwise.
    """
    from rich.markup import escape

    from gdmd.recipe import load_recipe

    loaded = load_recipe(recipe, plugin_manager(ctx), overrides or ())
    console().print(f"[green]ok[/]: {escape(loaded.summary())}")


def schema(ctx: typer.Context) -> None:
    """Print the JSON Schema of recipes, for editors.

    The schema (draft 2020-12) covers every registered component's options.
    """
    from gdmd.recipe import recipe_json_schema

    typer.echo(json.dumps(recipe_json_schema(plugin_manager(ctx)), indent=2))
