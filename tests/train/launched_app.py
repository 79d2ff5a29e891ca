"""The ``gdmd`` command as a launcher starts it, plus what the multi-process tests inspect.

Run as ``torchrun --standalone --nproc_per_node N tests/train/launched_app.py run ...``.
Besides the built-in plugins it registers ``nan-on-process`` (a reward that turns NaN on one
process), and writes into ``$GDMD_TEST_RECORD``:

* ``rank<R>/``: the process's own training state after the run (checkpoint format), so a test
  can compare the processes' students, critics and optimizers;
* ``writes-rank<R>.json``: every file or folder the process opened for writing, or created,
  under ``$GDMD_TEST_RUNS``.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import gdmd
import gdmd.run.session as session
from gdmd.cli import make_app
from gdmd.manager import build_plugin_manager
from gdmd.train.checkpoint import save_checkpoint
from gdmd.train.state import checkpoint_payload

RECORD = Path(os.environ["GDMD_TEST_RECORD"])
RUNS = Path(os.environ["GDMD_TEST_RUNS"]).resolve()
RANK = int(os.environ.get("RANK", "0"))


class NaNOnProcess:
    """A reward that is NaN on process ``GDMD_TEST_NAN_RANK`` from its second call on."""

    @gdmd.hookimpl
    def gdmd_register_rewards(self, register) -> None:
        bad_rank = int(os.environ.get("GDMD_TEST_NAN_RANK", "1"))

        class Reward:
            differentiable = False

            def __init__(self) -> None:
                self.calls = 0

            def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
                self.calls += 1
                value = float("nan") if RANK == bad_rank and self.calls >= 2 else 0.0
                return torch.full((images.shape[0],), value) + images.mean(dim=(1, 2, 3))

        register("nan-on-process", lambda config, ctx: Reward(), summary="NaN on one process")


writes: list[str] = []


def _record(path: object) -> None:
    try:
        resolved = Path(os.fspath(path)).resolve()  # type: ignore[arg-type]
    except TypeError:
        return
    if resolved.is_relative_to(RUNS):
        writes.append(str(resolved))


real_open, real_mkdir, real_replace = io.open, os.mkdir, os.replace


def recording_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
    if any(flag in mode for flag in "wax+"):
        _record(file)
    return real_open(file, mode, *args, **kwargs)


def recording_mkdir(path, *args, **kwargs):  # type: ignore[no-untyped-def]
    _record(path)
    return real_mkdir(path, *args, **kwargs)


def recording_replace(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
    _record(dst)
    return real_replace(src, dst, *args, **kwargs)


io.open = recording_open  # type: ignore[assignment]
os.mkdir = recording_mkdir  # type: ignore[assignment]
os.replace = recording_replace  # type: ignore[assignment]


@atexit.register
def _write_record() -> None:
    RECORD.mkdir(parents=True, exist_ok=True)
    (RECORD / f"writes-rank{RANK}.json").write_text(json.dumps(writes))


real_train = session.train


def recording_train(*args, **kwargs):  # type: ignore[no-untyped-def]
    result = real_train(*args, **kwargs)
    tensors, states = checkpoint_payload(result.state)
    save_checkpoint(RECORD / f"rank{RANK}", result.step, tensors, states, keep=1)
    return result


session.train = recording_train

if __name__ == "__main__":
    pm = build_plugin_manager()
    pm.register(NaNOnProcess(), name="nan-plugin")
    make_app(pm)(sys.argv[1:], prog_name="gdmd")
