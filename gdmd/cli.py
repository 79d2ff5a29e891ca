"""The ``gdmd`` command line, built by :func:`make_app`.

Commands: ``list-plugins``, ``validate``, ``schema``, ``run``, plus any a plugin adds through
``gdmd_register_commands``. A :class:`gdmd.errors.GdmdError` escaping a command is printed
as ``error: <message>`` on stderr (no traceback) and the process exits with its
``exit_code``; Ctrl-C exits with 130.

Importing this module and ``gdmd --help`` import no torch: plugin loading, recipes and
training are imported inside the commands.
"""

import json
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer
from typer.core import TyperGroup

from gdmd import __version__
from gdmd.errors import GdmdError

if TYPE_CHECKING:
    from rich.console import Console

    from gdmd.manager import GdmdPluginManager

#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

_SET_HELP = (
    "Override a recipe value, e.g. --set train.steps=100 --set reward.clip.weight=0.5 "
    "(values are TOML; bare words are strings). Repeatable."
)


def _console(stderr: bool = False) -> "Console":
    from rich.console import Console

    # soft_wrap: never break a message (often a path or a key) in the middle.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_error(exc: BaseException) -> None:
    """Print ``error: <message>`` in red on stderr."""
    from rich.markup import escape

    _console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}")


class _Session:
    """The plugin manager the commands share, built on first use unless given."""

    def __init__(self, pm: "GdmdPluginManager | None") -> None:
        self._pm = pm

    @property
    def pm(self) -> "GdmdPluginManager":
        if self._pm is None:
            from gdmd.manager import build_plugin_manager

            self._pm = build_plugin_manager()
        return self._pm


class _GdmdGroup(TyperGroup):
    """Adds plugin commands when a command name is looked up or listed, and turns gdmd's
    errors into a message and an exit code."""

    session: ClassVar[_Session]
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
            _console(stderr=True).print(
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
        try:
            return super().invoke(ctx)
        except GdmdError as exc:
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _console(stderr=True).print("[bold red]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"gdmd {__version__}")
        raise typer.Exit()


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


def make_app(pm: "GdmdPluginManager | None" = None) -> typer.Typer:
    """The ``gdmd`` Typer application. Without ``pm``, plugins load on first use."""
    session = _Session(pm)
    group = type("GdmdGroup", (_GdmdGroup,), {"session": session})
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

    @app.callback()
    def main_options(
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=_show_version, is_eager=True, help="Print the version."
            ),
        ] = False,
    ) -> None:
        """Reward-guided diffusion distillation (GDMD). Docs: docs/cli.md."""

    @app.command("list-plugins")
    def list_plugins(
        as_json: Annotated[
            bool, typer.Option("--json", help="Print JSON: components and failures.")
        ] = False,
    ) -> None:
        """List every component plugins registered, and plugins that failed to load.

        Components are models (with the roles they can fill), rewards, targets and prompt
        sources: the complete vocabulary of a recipe's kind keys.
        """
        listing = plugin_listing(session.pm)
        if as_json:
            typer.echo(json.dumps(listing, indent=2))
            return
        from rich import box
        from rich.table import Table

        console = _console()
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
        from rich.console import Console

        Console(highlight=False).print(table)
        if listing["failures"]:
            console.print("[bold red]plugins that failed to load:[/]")
            for failure in listing["failures"]:
                origin = " ".join(p for p in (failure["distribution"], failure["version"]) if p)
                console.print(
                    f"  {failure['plugin']}" + (f" ({origin})" if origin else "") + ": "
                    f"{failure['error']}",
                    markup=False,
                )

    @app.command()
    def validate(
        recipe: Annotated[str, typer.Argument(help="The recipe (TOML) to check.")],
        overrides: Annotated[
            list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)
        ] = None,
    ) -> None:
        """Check a recipe without building anything.

        Exits 0 when the recipe is valid, 2 with every problem listed otherwise.
        """
        from rich.markup import escape

        from gdmd.recipe import load_recipe

        loaded = load_recipe(recipe, session.pm, overrides or ())
        _console().print(f"[green]ok[/]: {escape(loaded.summary())}")

    @app.command()
    def schema() -> None:
        """Print the JSON Schema of recipes, for editors.

        The schema (draft 2020-12) covers every registered component's options.
        """
        from gdmd.recipe import recipe_json_schema

        typer.echo(json.dumps(recipe_json_schema(session.pm), indent=2))

    @app.command()
    def run(
        recipe: Annotated[str, typer.Argument(help="The recipe (TOML) to run.")],
        overrides: Annotated[
            list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)
        ] = None,
        resume: Annotated[
            str | None,
            typer.Option(
                "--resume",
                metavar="auto|DIR",
                help="Resume from the run's latest checkpoint (auto) or from a checkpoint "
                "directory.",
            ),
        ] = None,
        dry_run: Annotated[
            bool,
            typer.Option("--dry-run", help="Build every component and stop before training."),
        ] = False,
        num_processes: Annotated[
            int,
            typer.Option(
                "--num-processes",
                min=1,
                help="Train with N local processes (DDP; gloo on a CPU), started for you. "
                "Under torchrun or accelerate launch, leave it out (docs/scaling.md).",
            ),
        ] = 1,
    ) -> None:
        """Run a recipe: distil, checkpoint, sample, evaluate.

        Works unchanged under accelerate launch and torchrun.
        """
        from gdmd.recipe import load_recipe

        loaded = load_recipe(recipe, session.pm, overrides or ())
        from rich.console import Console

        from gdmd.train import runner

        if num_processes > 1 and not dry_run:
            from gdmd.train.launch import launch_local

            args = ["run", recipe, *(f"--set={o}" for o in overrides or ())]
            args += [f"--resume={resume}"] if resume is not None else []
            raise typer.Exit(launch_local(num_processes, args))
        if dry_run:
            runner.dry_run(loaded, session.pm, console=Console())
        else:
            runner.run_recipe(loaded, session.pm, resume=resume, console=Console())

    @app.command()
    def sample(
        run_dir: Annotated[str, typer.Argument(help="A run directory written by gdmd run.")],
        prompts_file: Annotated[str, typer.Option("--prompts-file", help="Prompts, one per line.")],
        out: Annotated[str, typer.Option("--out", help="Folder for the PNGs and index.jsonl.")],
        steps: Annotated[
            int | None,
            typer.Option(help="Sampling steps (default: the student's own; teacher: 50)."),
        ] = None,
        seed: Annotated[
            int, typer.Option(help="Seed of the first image; image i uses seed+i.")
        ] = 0,
        model: Annotated[
            str, typer.Option(help="Which model samples: student or teacher.")
        ] = "student",
        guidance_scale: Annotated[
            float | None, typer.Option(help="Teacher CFG scale (default: the recipe's).")
        ] = None,
    ) -> None:
        """Write one PNG per prompt line, plus index.jsonl (prompt, seed, file)."""
        from pathlib import Path

        from gdmd.builtins.prompts import read_prompt_file
        from gdmd.eval.harness import generate, load_run
        from gdmd.images import to_pil

        prompts = read_prompt_file(prompts_file)
        run = load_run(run_dir, session.pm)
        seeds = [seed + i for i in range(len(prompts))]
        images = generate(
            run, prompts, seeds, model=model, steps=steps, guidance_scale=guidance_scale
        )
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "index.jsonl").open("w") as index:
            rows = zip(prompts, seeds, images, strict=True)
            for i, (prompt, image_seed, image) in enumerate(rows):
                name = f"{i:05d}.png"
                to_pil(image).save(folder / name)
                index.write(json.dumps({"prompt": prompt, "seed": image_seed, "file": name}) + "\n")
        _console().print(f"[green]wrote[/] {len(prompts)} images to {folder}")

    @app.command("eval")
    def evaluate(
        run_dirs: Annotated[list[str], typer.Argument(help="Run directories to compare.")],
        teacher: Annotated[
            bool, typer.Option("--teacher", help="Also evaluate the first run's teacher.")
        ] = False,
        teacher_steps: Annotated[int, typer.Option(help="Sampling steps of the teacher row.")] = 50,
        seeds: Annotated[
            str | None, typer.Option(help="Comma-separated seeds (default: the recipe's [eval]).")
        ] = None,
        out: Annotated[
            str | None,
            typer.Option(help="Where to write eval.json and eval.md (default: the first run)."),
        ] = None,
    ) -> None:
        """Evaluate runs on their held-out prompts and print one comparison table.

        Metrics: each recipe reward's mean, the prompt source's own metrics (toy: exact-checker
        accuracy per category, Frechet distance to fresh renders, diversity) and images/s.
        """
        from pathlib import Path

        import torch
        from rich import box
        from rich.table import Table

        from gdmd.eval.harness import evaluate as evaluate_run
        from gdmd.eval.harness import load_run, results_markdown
        from gdmd.images import save_grid

        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
        results = []
        rows: list[tuple[str, Any]] = []
        shown: list[str] = []
        with _console().status("evaluating...", spinner="dots"):
            for index, run_dir in enumerate(run_dirs):
                run = load_run(run_dir, session.pm)
                jobs = [("teacher", teacher_steps)] if teacher and index == 0 else []
                for model, steps in [*jobs, ("student", None)]:
                    result, images, prompts = evaluate_run(
                        run, model=model, steps=steps, seeds=seed_list
                    )
                    results.append(result)
                    # The same prompts and seeds for every model, one row each, spread over
                    # the prompt list (evaluation prompts come grouped by category).
                    stride = max(1, len(prompts) // 8)
                    rows.append((result.label, images[::stride][:8]))
                    shown = prompts[::stride][:8]
        folder = Path(out) if out else Path(run_dirs[0])
        folder.mkdir(parents=True, exist_ok=True)
        grid = torch.cat([images for _, images in rows])
        save_grid(
            grid,
            folder / "comparison.png",
            shown * len(rows),
            ncol=len(shown),
            upscale=4,
            row_labels=[label for label, _ in rows],
        )
        # One column per model, one row per metric: stays readable at 80 columns.
        metrics: list[str] = []
        for r in results:
            metrics += [k for k in r.metrics if k not in metrics]
        table = Table(title="evaluation", title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("metric", style="bold")
        for r in results:
            table.add_column(r.label, justify="right")
        table.add_row("steps", *(str(r.steps) for r in results))
        table.add_row("images", *(str(r.num_images) for r in results))
        for metric in metrics:
            table.add_row(
                metric,
                *(f"{r.metrics[metric]:.4g}" if metric in r.metrics else "-" for r in results),
            )
        from rich.console import Console

        Console(highlight=False).print(table)
        (folder / "eval.json").write_text(
            json.dumps([r.to_json() for r in results], indent=1) + "\n"
        )
        (folder / "eval.md").write_text(results_markdown(results))
        _console().print(
            f"wrote {folder / 'eval.json'}, {folder / 'eval.md'} and {folder / 'comparison.png'}"
        )

    # Plugin-author tools live in their own module; only the registration is here.
    from gdmd.plugin_scaffold import plugin_app

    app.add_typer(plugin_app(), name="plugin", help="Tools for plugin authors (plugin new).")

    from gdmd.export import add_export_command

    add_export_command(app)
    return app


def main() -> None:
    """The ``gdmd`` console script."""
    make_app()()
