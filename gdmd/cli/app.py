"""The ``gdmd`` application: the commands of :mod:`gdmd.cli`'s modules gathered by
:func:`make_app`, the group that adds plugin commands and turns gdmd's errors into a message
and an exit code, and the console script :func:`main`."""

from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer
from typer.core import TyperGroup

from gdmd import __version__
from gdmd.cli.common import Session, console, print_error
from gdmd.cli.evaluate import evaluate
from gdmd.cli.export import export
from gdmd.cli.plugins import list_plugins
from gdmd.cli.recipes import schema, validate
from gdmd.cli.run import run
from gdmd.cli.sample import sample
from gdmd.errors import GdmdError

if TYPE_CHECKING:
    from gdmd.manager import GdmdPluginManager

#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class _GdmdGroup(TyperGroup):
    """Adds plugin commands when a command name is looked up or listed, and turns gdmd's
    errors into a message and an exit code."""

    session: ClassVar[Session]
    _plugin_commands_loaded = False

    def _load_plugin_commands(self) -> None:
        # Typer builds a fresh group for every invocation of the app, so this is per group.
        if self._plugin_commands_loaded:
            return
        self._plugin_commands_loaded = True
        extra = typer.Typer()
        try:
            failures = self.session.pm.register_commands(extra)
        except GdmdError as exc:  # the command that needs the plugins reports it
            print_error(exc)
            return
        from rich.markup import escape

        for failure in failures:
            console(stderr=True).print(
                f"[yellow]warning:[/] commands missing: {escape(failure.describe())}"
            )
        if not (extra.registered_commands or extra.registered_groups):
            return
        for name, command in typer.main.get_group(extra).commands.items():
            if name not in self.commands:  # a built-in command of the same name wins
                self.add_command(command, name)

    def list_commands(self, ctx: Any) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._load_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def invoke(self, ctx: Any) -> Any:
        ctx.obj = self.session  # the commands' contexts inherit it
        try:
            return super().invoke(ctx)
        except GdmdError as exc:
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console(stderr=True).print("[bold red]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"gdmd {__version__}")
        raise typer.Exit()


def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Reward-guided diffusion distillation (GDMD). Docs: docs/cli.md."""


def make_app(pm: "GdmdPluginManager | None" = None) -> typer.Typer:
    """The ``gdmd`` Typer application, its commands bound to ``pm`` (without one, plugins
    load on first use)."""
    group = type("GdmdGroup", (_GdmdGroup,), {"session": Session(pm)})
    app = typer.Typer(
        name="gdmd",
        cls=group,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        help="Reward-guided diffusion distillation: distil a many-step teacher into a few-step "
        "student with DMD, guided by rewards scored on its implicit targets (GDMD).",
    )
    app.callback()(main_options)
    app.command("list-plugins")(list_plugins)
    app.command()(validate)
    app.command()(schema)
    app.command()(run)
    app.command()(sample)
    app.command("eval")(evaluate)
    app.command("export")(export)

    # Plugin-author tools live in their own module; only the registration is here.
    from gdmd.scaffold import plugin_app

    app.add_typer(plugin_app(), name="plugin", help="Tools for plugin authors (plugin new).")
    return app


def main() -> None:
    """The ``gdmd`` console script."""
    make_app()()
