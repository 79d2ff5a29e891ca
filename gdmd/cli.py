"""The ``gdmd`` command line: each command a function of this module, gathered into an
application by :func:`make_app`.

Commands: ``list-plugins``, ``validate``, ``schema``, ``run``, ``sample``, ``eval``,
``export``, ``plugin``, plus any a plugin adds through ``gdmd_register_commands``. A command
finds the plugin manager of its application as ``ctx.obj.pm`` (built on first use unless
:func:`make_app` was given one). A :class:`gdmd.errors.GdmdError` escaping a command is printed
as ``error: <message>`` on stderr (no traceback) and the process exits with its
``exit_code``; Ctrl-C exits with 130.

Importing this module and ``gdmd --help`` import no torch: plugin loading, recipes and
training are imported inside the commands.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer
from typer.core import TyperGroup

from gdmd import __version__
from gdmd.errors import GdmdError

if TYPE_CHECKING:
    from rich.console import Console

    from gdmd.manager import GdmdPluginManager
    from gdmd.progress import Display

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
        ctx.obj = self.session  # the commands' contexts inherit it
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


def _pm(ctx: typer.Context) -> "GdmdPluginManager":
    """The plugin manager of the application running the command."""
    session: _Session = ctx.obj
    return session.pm


def _display() -> "Display":
    from gdmd.progress import Display

    return Display.on_console(_console())


def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Reward-guided diffusion distillation (GDMD). Docs: docs/cli.md."""


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
    listing = plugin_listing(_pm(ctx))
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
        console = _console()
        console.print("[bold red]plugins that failed to load:[/]")
        for failure in listing["failures"]:
            origin = " ".join(p for p in (failure["distribution"], failure["version"]) if p)
            console.print(
                f"  {failure['plugin']}" + (f" ({origin})" if origin else "") + ": "
                f"{failure['error']}",
                markup=False,
            )


def validate(
    ctx: typer.Context,
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

    loaded = load_recipe(recipe, _pm(ctx), overrides or ())
    _console().print(f"[green]ok[/]: {escape(loaded.summary())}")


def schema(ctx: typer.Context) -> None:
    """Print the JSON Schema of recipes, for editors.

    The schema (draft 2020-12) covers every registered component's options.
    """
    from gdmd.recipe import recipe_json_schema

    typer.echo(json.dumps(recipe_json_schema(_pm(ctx)), indent=2))


def run(
    ctx: typer.Context,
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

    pm = _pm(ctx)
    loaded = load_recipe(recipe, pm, overrides or ())
    if num_processes > 1 and not dry_run:
        from gdmd.train.launch import launch_local

        args = ["run", recipe, *(f"--set={o}" for o in overrides or ())]
        args += [f"--resume={resume}"] if resume is not None else []
        raise typer.Exit(launch_local(num_processes, args))
    from gdmd.run import session

    if dry_run:
        _print_dry_run(session.dry_run(loaded, pm, display=_display()))
    else:
        session.run_recipe(loaded, pm, resume=resume, display=_display())


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


_DEVICE_HELP = "Where to sample: cuda, cuda:N, cpu... (default: cuda when there is a GPU)."
_DTYPE_HELP = (
    "Compute dtype: float32, bfloat16 or float16 (default: the run's mixed precision, "
    "float32 without)."
)
_DTYPES = {
    "float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip


def _open_run(
    ctx: typer.Context, run_dir: str, device: str | None, dtype: str | None, *, rewards: bool
) -> Any:
    import torch

    from gdmd.errors import GdmdError
    from gdmd.run.rundir import RunDir, RunDirError

    chosen_dtype = None
    if dtype is not None:
        if dtype not in _DTYPES:
            raise RunDirError(f"--dtype {dtype!r}: use one of {', '.join(sorted(_DTYPES))}")
        chosen_dtype = getattr(torch, _DTYPES[dtype])
    chosen_device = None
    if device is not None:
        try:
            chosen_device = torch.device(device)
        except RuntimeError as exc:
            raise RunDirError(f"--device {device!r} is not a device: {exc}") from exc
        if chosen_device.type == "cuda" and not torch.cuda.is_available():
            raise GdmdError(f"--device {device}: this machine has no CUDA device")
    return RunDir.existing(run_dir).open(
        _pm(ctx), device=chosen_device, dtype=chosen_dtype, rewards=rewards
    )


def _sample_processes(device: str | None) -> tuple[Any, str | None]:
    """Under a multi-process launch (accelerate launch, torchrun): the process state
    (gloo on a CPU, each process on its own GPU) and the device this process samples on;
    a single process: ``(None, device)``."""
    from gdmd.train.distributed import launched_world_size

    if launched_world_size() <= 1:
        return None, device
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state, device if device is not None else str(state.device)


def sample(
    ctx: typer.Context,
    run_dir: Annotated[str, typer.Argument(help="A run directory written by gdmd run.")],
    prompts_file: Annotated[str, typer.Option("--prompts-file", help="Prompts, one per line.")],
    out: Annotated[str, typer.Option("--out", help="Folder for the PNGs and index.jsonl.")],
    steps: Annotated[
        int | None,
        typer.Option(help="Sampling steps (default: the student's own; teacher: 50)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed+i.")] = 0,
    model: Annotated[str, typer.Option(help="Which model samples: student or teacher.")] = (
        "student"
    ),
    guidance_scale: Annotated[
        float | None, typer.Option(help="Teacher CFG scale (default: the recipe's).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help=_DEVICE_HELP)] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help=_DTYPE_HELP)] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images generated together.")
    ] = 64,
) -> None:
    """Write one PNG per prompt line, plus index.jsonl (prompt, seed, file).

    Builds the teacher and the trained student only (no critic, no rewards). Under
    accelerate launch or torchrun the batches are shared out between the processes (each
    on its own GPU); the images do not depend on the number of processes.
    """
    from gdmd.builtins.prompts import read_prompt_file
    from gdmd.eval.harness import generate
    from gdmd.images import to_pil

    prompts = read_prompt_file(prompts_file)
    state, device = _sample_processes(device)
    main = state is None or state.is_main_process
    folder = Path(out)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
    from contextlib import nullcontext

    loading = _console(stderr=True).status("loading the run...", spinner="dots")
    with loading if main else nullcontext():
        opened = _open_run(ctx, run_dir, device, dtype, rewards=False)
    seeds = [seed + i for i in range(len(prompts))]
    # Whole batches go to processes in turn: a batch draws its re-noising from one generator,
    # so keeping batches whole keeps every image what a single process draws.
    starts = list(range(0, len(prompts), batch_size))
    mine = starts if state is None else starts[state.process_index :: state.num_processes]
    if state is not None:
        state.wait_for_everyone()  # the folder exists before anyone writes into it
    for start in mine:
        images = generate(
            opened,
            prompts[start : start + batch_size],
            seeds[start : start + batch_size],
            model=model,
            steps=steps,
            guidance_scale=guidance_scale,
            batch_size=batch_size,
        )
        for offset, image in enumerate(images):
            to_pil(image).save(folder / f"{start + offset:05d}.png")
    if state is not None:
        state.wait_for_everyone()  # every PNG is written before the index names it
    if not main:
        return
    with (folder / "index.jsonl").open("w") as index:
        for i, (prompt, image_seed) in enumerate(zip(prompts, seeds, strict=True)):
            index.write(json.dumps({"prompt": prompt, "seed": image_seed, "file": f"{i:05d}.png"}))
            index.write("\n")
    processes = "" if state is None else f" from {state.num_processes} processes"
    _console().print(f"[green]wrote[/] {len(prompts)} images to {folder}{processes}")


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
            help="An eval file (TOML) of [metric.<label>] tables, each a registered reward "
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
        str | None, typer.Option(help="Comma-separated seeds (default: the recipe's [eval]).")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="Where to write (default: the first run; with --prompts, "
            "<first run>/eval/<prompt file name>)."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help=_DEVICE_HELP)] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help=_DTYPE_HELP)] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", min=1, help="Images generated together (default: [eval] batch_size)."
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

    from rich.console import Console

    from gdmd.eval.harness import evaluate as evaluate_run
    from gdmd.eval.report import results_table, write_report

    results = []
    rows: list[tuple[str, Any]] = []
    shown: list[str] = []
    with _console(stderr=True).status("evaluating...", spinner="dots"):
        for index, run_dir in enumerate(run_dirs):
            opened = _open_run(ctx, run_dir, device, dtype, rewards=True)
            jobs = [("teacher", teacher_steps)] if teacher and index == 0 else []
            for model, steps in [*jobs, ("student", None)]:
                result, images, prompt_list = evaluate_run(
                    opened, model=model, steps=steps, seeds=seed_list, batch_size=batch_size
                )
                results.append(result)
                # The same prompts and seeds for every model, one row each, spread over
                # the prompt list (evaluation prompts come grouped by category).
                stride = max(1, len(prompt_list) // 8)
                rows.append((result.label, images[::stride][:8]))
                shown = prompt_list[::stride][:8]
    Console(highlight=False).print(results_table(results))
    written = write_report(Path(out) if out else Path(run_dirs[0]), results, rows, shown)
    _console().print(f"wrote {', '.join(str(p) for p in written[:-1])} and {written[-1]}")


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

    pm = _pm(ctx)
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
        open_run=lambda run_dir: _open_run(ctx, str(run_dir), device, dtype, rewards=False),
        seeds=seeds,
        metrics=settings.metrics if settings else None,
        clip_model=clip_model,
        teacher=teacher,
        teacher_steps=teacher_steps,
        prompt_source={"path": str(prompts), "format": format or detect_format(prompts)},
        device=_metric_device(device),
        batch_size=batch_size,
        display=_display(),
    )
    from gdmd.eval.report import difference_table, suite_table

    console = Console(highlight=False, soft_wrap=True)
    console.print(suite_table(result.summary))
    differences = difference_table(result.summary)
    if differences is not None:
        console.print(differences)
    _console().print(
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

    result = export_run(run_dir, out, format, _pm(ctx))
    _console().print(
        f"[green]wrote[/] {escape(str(result.out))} ({result.student_kind} student, "
        f"{result.format}; {len(result.timesteps)} steps, timesteps {result.timesteps})"
    )


def make_app(pm: "GdmdPluginManager | None" = None) -> typer.Typer:
    """The ``gdmd`` Typer application, its commands bound to ``pm`` (without one, plugins
    load on first use)."""
    group = type("GdmdGroup", (_GdmdGroup,), {"session": _Session(pm)})
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
