"""``gdmd eval``: finished runs compared on the recipe's held-out prompts, or on a public
prompt set (``--prompts FILE``, :func:`gdmd.eval.suite.run_suite`)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from gdmd.cli.common import DEVICE_HELP, DTYPE_HELP, console, display, open_run, plugin_manager


def _seed_list(seeds: str | None) -> list[int] | None:
    """``--seeds 0,1,2`` as integers; a malformed list is a usage error, not a traceback."""
    from gdmd.eval.errors import SuiteError

    if not seeds:
        return None
    try:
        values = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise SuiteError(
            f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if any(v < 0 for v in values) or len(set(values)) < len(values):
        raise SuiteError(f"--seeds {seeds!r}: seeds must be distinct and not negative")
    return values


def evaluate(
    ctx: typer.Context,
    run_dirs: Annotated[list[str], typer.Argument(help="Run directories to compare.")],
    prompts: Annotated[
        str | None,
        typer.Option(
            "--prompts",
            help="A prompt set (HPSv2 folder or .json, DrawBench .csv, Parti .tsv, GenEval "
            ".jsonl, T2I-CompBench .txt, plain .txt): write images/, index.jsonl, eval.json, "
            "eval.md and report.html into --out. Without it, the recipe's held-out prompts.",
        ),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="The prompt set's format: hpsv2, drawbench, parti, geneval, t2i-compbench or "
            "text (default: from the file name).",
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            help="An eval file (TOML) of \\[metric.<label>] tables, each a registered reward "
            "(default: the first run's recipe rewards). With --prompts only.",
        ),
    ] = None,
    teacher: Annotated[
        bool, typer.Option("--teacher", help="Also evaluate the first run's teacher.")
    ] = False,
    teacher_steps: Annotated[
        int, typer.Option(min=1, help="Sampling steps of the teacher row.")
    ] = 50,
    seeds: Annotated[
        str | None,
        typer.Option(help="Comma-separated seeds (default: the recipe's \\[eval] seeds)."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="Where to write (default: the first run; with --prompts, "
            "<first run>/eval/<prompt file name>)."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help=DTYPE_HELP)] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", min=1, help="Images generated together (default: \\[eval] batch_size)."
        ),
    ] = None,
) -> None:
    """Evaluate runs and print one comparison table.

    Without --prompts: on the recipe's held-out prompts; metrics are each recipe reward's
    mean, the prompt source's own metrics (toy: exact-checker accuracy per category, Frechet
    distance to fresh renders, diversity) and images/s. With --prompts: on a public prompt
    set, any registered reward as a metric, with bootstrap intervals, paired differences and
    an HTML report; images and scores already made are reused.
    """
    seed_list = _seed_list(seeds)
    if prompts is not None:
        _evaluate_prompt_set(
            ctx, run_dirs, prompts, format, metrics, teacher, teacher_steps, seed_list, out,
            device, dtype, batch_size,
        )  # fmt: skip
        return
    if format is not None or metrics is not None:
        from gdmd.eval.errors import SuiteError

        raise SuiteError("--format and --metrics need --prompts FILE (a prompt set to score)")
    _evaluate_held_out(
        ctx, run_dirs, teacher, teacher_steps, seed_list, out, device, dtype, batch_size
    )


def _evaluate_held_out(
    ctx: typer.Context,
    run_dirs: list[str],
    teacher: bool,
    teacher_steps: int,
    seeds: list[int] | None,
    out: str | None,
    device: str | None,
    dtype: str | None,
    batch_size: int | None,
) -> None:
    """``gdmd eval RUN...``: each run on its recipe's held-out prompts, one table, one
    comparison grid."""
    from rich.console import Console

    from gdmd.eval.harness import evaluate as evaluate_run
    from gdmd.eval.report import results_table, write_report

    results = []
    rows: list[tuple[str, Any]] = []
    shown: list[str] = []
    with console(stderr=True).status("evaluating...", spinner="dots"):
        for index, run_dir in enumerate(run_dirs):
            opened = open_run(ctx, run_dir, device, dtype, rewards=True)
            jobs = [("teacher", teacher_steps)] if teacher and index == 0 else []
            for model, steps in [*jobs, ("student", None)]:
                result, images, prompt_list = evaluate_run(
                    opened, model=model, steps=steps, seeds=seeds, batch_size=batch_size
                )
                results.append(result)
                # The same prompts and seeds for every model, one row each, spread over
                # the prompt list (evaluation prompts come grouped by category).
                stride = max(1, len(prompt_list) // 8)
                rows.append((result.label, images[::stride][:8]))
                shown = prompt_list[::stride][:8]
    Console(highlight=False).print(results_table(results))
    written = write_report(Path(out) if out else Path(run_dirs[0]), results, rows, shown)
    console().print(f"wrote {', '.join(str(p) for p in written[:-1])} and {written[-1]}")


def _evaluate_prompt_set(
    ctx: typer.Context,
    run_dirs: list[str],
    prompts: str,
    format: str | None,
    metrics: str | None,
    teacher: bool,
    teacher_steps: int,
    seeds: list[int] | None,
    out: str | None,
    device: str | None,
    dtype: str | None,
    batch_size: int | None,
) -> None:
    """``gdmd eval RUN... --prompts FILE``: :func:`gdmd.eval.suite.run_suite` on the CLI."""
    from rich.console import Console
    from rich.markup import escape

    from gdmd.eval.metrics import load_eval_file
    from gdmd.eval.prompt_sets import detect_format, read_prompt_set
    from gdmd.eval.suite import run_suite

    pm = plugin_manager(ctx)
    prompt_set = read_prompt_set(prompts, format)
    settings = load_eval_file(metrics, pm) if metrics else None
    folder = Path(out) if out else Path(run_dirs[0]) / "eval" / Path(prompts).stem
    clip_model = None
    if settings is not None and settings.frechet.clip_model:
        clip_model = (settings.frechet.clip_model, settings.frechet.revision)
    result = run_suite(
        run_dirs,
        prompt_set,
        folder,
        pm,
        open_run=lambda run_dir: open_run(ctx, str(run_dir), device, dtype, rewards=False),
        seeds=seeds,
        metrics=settings.metrics if settings else None,
        clip_model=clip_model,
        teacher=teacher,
        teacher_steps=teacher_steps,
        prompt_source={"path": str(prompts), "format": format or detect_format(prompts)},
        device=_metric_device(device),
        batch_size=batch_size,
        display=display(),
    )
    from gdmd.eval.report import difference_table, suite_table

    terminal = Console(highlight=False, soft_wrap=True)
    terminal.print(suite_table(result.summary))
    differences = difference_table(result.summary)
    if differences is not None:
        terminal.print(differences)
    console().print(
        f"{result.generated} images generated, {result.reused} reused; {result.scored} "
        f"scores computed. [green]wrote[/] {escape(str(folder))}: images/, index.jsonl, "
        "eval.json, eval.md, report.html"
    )


def _metric_device(device: str | None) -> Any:
    """The device metrics run on: ``--device``, else CUDA when there is a GPU."""
    import torch

    from gdmd.run.rundir import RunDirError, default_device

    if device is None:
        return default_device()
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise RunDirError(f"--device {device!r} is not a device: {exc}") from exc
