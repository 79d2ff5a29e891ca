"""``gdmd sample``: a run's student (or teacher) draws one PNG per prompt line."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gdmd.cli.common import DEVICE_HELP, DTYPE_HELP, console, open_run


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
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help=DTYPE_HELP)] = None,
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

    loading = console(stderr=True).status("loading the run...", spinner="dots")
    with loading if main else nullcontext():
        opened = open_run(ctx, run_dir, device, dtype, rewards=False)
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
    console().print(f"[green]wrote[/] {len(prompts)} images to {folder}{processes}")
