"""``gdmd export``: a run's student, written for tools outside gdmd."""

from typing import Annotated

import typer

from gdmd.cli.common import console, plugin_manager


def export(
    ctx: typer.Context,
    run_dir: Annotated[str, typer.Argument(help="A run directory written by gdmd run.")],
    out: Annotated[str, typer.Argument(help="The folder to write (must not exist).")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="What the student's model family writes. sd3: lora (a diffusers LoRA file for "
            "load_lora_weights on the base pipeline) or merged (a complete diffusers pipeline "
            "with the LoRA merged in).",
        ),
    ] = "lora",
) -> None:
    """Export a run's student for tools outside gdmd, with a model card (README.md).

    The student's model family writes it (sd3: lora or merged); the trained weights come from
    the run's newest whole checkpoint, so FSDP2 runs export too.
    """
    from rich.markup import escape

    from gdmd.export import export_run

    result = export_run(run_dir, out, format, plugin_manager(ctx))
    console().print(
        f"[green]wrote[/] {escape(str(result.out))} ({result.student_kind} student, "
        f"{result.format}; {len(result.timesteps)} steps, timesteps {result.timesteps})"
    )
