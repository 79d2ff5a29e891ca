"""``gdmd run --num-processes N``: start N local processes with PyTorch's own launcher.

The processes are started by torch elastic (what ``torchrun --standalone`` does: a local
rendezvous on a free port, no restarts), each running the same ``gdmd run`` command; accelerate
then forms the process group from the environment the launcher set. The launcher reports each
process's exit status, so the command exits with the code of the process that failed first
(2 for a refused recipe, 3 for a non-finite value, 143 after SIGTERM). When a process is killed
(kill -9, the out-of-memory killer), the others fail in their next collective (gloo and NCCL
see the closed connection at once) and the launcher stops them; the command then names the
killed process and exits 128 + the signal's number (137 for SIGKILL).
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Sequence

from gdmd.errors import GdmdError
from gdmd.train.distributed import LaunchError, launched_world_size


class ProcessKilledError(GdmdError):
    """One process of a local multi-process run was killed by a signal; all stopped."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def launch_local(num_processes: int, gdmd_args: Sequence[str]) -> int:
    """Run ``python -m gdmd <gdmd_args>`` in ``num_processes`` local processes; return the
    exit code to report."""
    if launched_world_size() > 1:
        raise LaunchError(
            "--num-processes starts processes itself; this command already runs under a "
            "launcher (WORLD_SIZE is set). Drop --num-processes, or the outer launcher"
        )
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Without this each process would use every core; torchrun makes the same choice.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        # After forwarding SIGTERM/SIGINT, time for every process to finish its step and
        # write one checkpoint before the launcher kills it (torchrun's default is 30 s).
        shutdown_timeout=300,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "gdmd", *gdmd_args)
    except ChildFailedError as failed:
        failures = list(failed.failures.values())
        # A process killed by a signal (kill -9, the OOM killer) reports -signum and said
        # nothing itself; the others then fail in their next collective. Name the killed one.
        killed = [f for f in failures if f.exitcode < 0]
        if killed:
            first = min(killed, key=lambda f: f.timestamp)
            raise ProcessKilledError(
                f"process {first.local_rank} of {num_processes} (pid {first.pid}) was killed "
                f"by {_signal_name(-first.exitcode)}, so the run stopped on every process; its "
                "newest complete checkpoint is intact: continue with --resume auto",
                # Shells report a death by signal as 128 + signum.
                exit_code=128 - first.exitcode,
            ) from None
        return min(failures, key=lambda f: f.timestamp).exitcode
    except SignalException as received:
        return 128 + int(received.sigval)
    except Exception as exc:  # the launcher itself failed (rendezvous, spawn)
        raise GdmdError(f"could not start {num_processes} processes: {exc}") from exc
    return 0
