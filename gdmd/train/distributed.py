"""What the loop needs from several processes, on top of accelerate: checks and agreements.

Every helper is a no-op (no collective) on a single process. On several, each is a collective
that every process must reach in the same order; the loop calls them at fixed points.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from gdmd.errors import GdmdError, NonFiniteError

#: accelerate releases older than this lack what the FSDP2 path needs (per-call FSDP2
#: prepare, fp32 upcast of trainable parameters only, DCP optimizer loading).
MIN_ACCELERATE_FOR_FSDP2 = "1.13"


class LaunchError(GdmdError):
    """The processes a launcher started do not form the run gdmd would train."""

    exit_code = 2


def launched_world_size() -> int:
    """The number of processes a launcher (torchrun, accelerate launch, srun) announced."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def wants_cpu(cpu: bool) -> bool:
    """Run on the CPU: asked for, or several processes were launched on a machine without a
    GPU (accelerate would otherwise give each process a single-process run of its own)."""
    return cpu or (launched_world_size() > 1 and not torch.cuda.is_available())


def check_launch(accelerator: Accelerator) -> None:
    """Refuse a launch whose processes would each train alone and share one run directory."""
    announced = launched_world_size()
    if announced > 1 and accelerator.num_processes == 1:
        raise LaunchError(
            f"the launcher started {announced} processes (WORLD_SIZE={announced}) but "
            "accelerate sees a single one, so each would train alone and overwrite the same "
            "run directory. Launch with `gdmd run --num-processes N`, `torchrun "
            "--nproc_per_node N -m gdmd run ...` or `accelerate launch` with a multi-process "
            "config (see docs/scaling.md)"
        )


def check_backend(accelerator: Accelerator) -> None:
    """Refuse the back ends that cannot train two networks from one accelerator."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise LaunchError(
            "DeepSpeed is not supported: one accelerate Accelerator drives a single DeepSpeed "
            "engine, and gdmd trains two networks (student and critic). Use DDP (the default "
            "of `accelerate launch --multi_gpu`) or FSDP2 (recipes/accelerate/fsdp2.yaml)"
        )
    if kind == DistributedType.FSDP and not is_fsdp2(accelerator):
        raise LaunchError(
            "FSDP1 is not supported: it is deprecated in PyTorch, and accelerate pairs FSDP1 "
            "optimizers with models by position. Set fsdp_version: 2 in the accelerate config "
            "(recipes/accelerate/fsdp2.yaml), or use DDP"
        )
    if is_fsdp2(accelerator):
        from importlib.metadata import version

        from packaging.version import Version

        installed = version("accelerate")
        if Version(installed) < Version(MIN_ACCELERATE_FOR_FSDP2):
            raise LaunchError(
                f"FSDP2 needs accelerate >= {MIN_ACCELERATE_FOR_FSDP2} (installed: "
                f"{installed}); upgrade it, or use DDP"
            )


def is_fsdp2(accelerator: Accelerator) -> bool:
    if accelerator.distributed_type != DistributedType.FSDP:
        return False
    plugin = accelerator.state.fsdp_plugin
    return int(getattr(plugin, "fsdp_version", 1) or 1) == 2


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` is true on at least one process."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def stop_together(accelerator: Accelerator, failure: GdmdError | None, step: int) -> None:
    """Raise on every process when ``failure`` happened on any of them.

    The process that failed raises its own error; the others say which process stopped the
    run. Called before each backward pass and optimizer step, so no process is left waiting
    in a collective the others never reach, and no optimizer steps on a bad value.
    """
    if accelerator.num_processes == 1:
        if failure is not None:
            raise failure
        return
    flags = torch.zeros(accelerator.num_processes, device=accelerator.device)
    if failure is not None:
        flags[accelerator.process_index] = 1.0
    flags = accelerator.reduce(flags, reduction="sum")
    if failure is not None:
        raise failure
    failed = [i for i, v in enumerate(flags.tolist()) if v > 0]
    if failed:
        raise NonFiniteError(
            f"process {failed[0]} stopped the run at step {step} (see its message); every "
            "process stopped before the optimizer step, the last checkpoint is intact"
        )


def mean_over_processes(accelerator: Accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the processes (a loss of the global batch, for instance)."""
    if accelerator.num_processes == 1:
        return metrics
    from accelerate.utils import gather_object

    every = gather_object([metrics])
    keys = [k for k in metrics if all(k in m for m in every)]
    return {k: sum(m[k] for m in every) / len(every) for k in keys}


def broadcast_from_main(accelerator: Accelerator, value: Any) -> Any:
    """The main process's ``value`` (any picklable object), on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if accelerator.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]
