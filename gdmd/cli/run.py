"""``gdmd run``: distil a recipe, in this process or in local processes it starts."""

from typing import Annotated, Any

import typer

from gdmd.cli.common import SET_HELP, display, plugin_manager


def run(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="The recipe (TOML) to run.")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="auto|DIR",
            help="Resume from the run's latest checkpoint (auto) or from a checkpoint "
            "directory. Without it, a run directory that already holds a run is refused.",
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

    pm = plugin_manager(ctx)
    loaded = load_recipe(recipe, pm, overrides or ())
    if num_processes > 1 and not dry_run:
        from gdmd.train.launch import launch_local

        args = ["run", recipe, *(f"--set={o}" for o in overrides or ())]
        args += [f"--resume={resume}"] if resume is not None else []
        raise typer.Exit(launch_local(num_processes, args))
    from gdmd.run import session

    if dry_run:
        _print_dry_run(session.dry_run(loaded, pm, display=display()))
    else:
        session.run_recipe(loaded, pm, resume=resume, display=display())


def _print_dry_run(plan: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dry run: {plan.name}")
    for column in ("role", "kind", "plugin"):
        table.add_column(column)
    table.add_column("trainable parameters", justify="right")
    for row in plan.components:
        table.add_row(row.role, row.kind, row.plugin, row.detail)
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    console.print(
        f"{plan.steps} student updates x {plan.critic_steps} critic updates; "
        f"{plan.samples_per_update} student samples per update; student timesteps "
        f"{[round(t, 4) for t in plan.student_timesteps]}; run directory {plan.run_dir}",
        markup=False,
    )
