"""What the commands of :mod:`gdmd.cli` share: consoles, the error line, the session holding
the plugin manager of the running application, the progress display, opening a run, and the
help of common options.

Imports no torch: whatever needs it imports it inside the function.
"""

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from gdmd.manager import GdmdPluginManager
    from gdmd.progress import Display

SET_HELP = (
    "Override a recipe value, e.g. --set train.steps=100 --set reward.clip.weight=0.5 "
    "(values are TOML; bare words are strings). Repeatable."
)
DEVICE_HELP = "Where to sample: cuda, cuda:N, cpu... (default: cuda when there is a GPU)."
DTYPE_HELP = (
    "Compute dtype: float32, bfloat16 or float16 (default: the run's mixed precision, "
    "float32 without)."
)
_DTYPES = {
    "float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip


def console(stderr: bool = False) -> "Console":
    """A rich console on stdout (or stderr) that never highlights nor breaks a line."""
    from rich.console import Console

    # soft_wrap: never break a message (often a path or a key) in the middle.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_error(exc: BaseException) -> None:
    """Print ``error: <message>`` in red on stderr."""
    from rich.markup import escape

    console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}")


class Session:
    """The plugin manager the commands share, built on first use unless given."""

    def __init__(self, pm: "GdmdPluginManager | None") -> None:
        self._pm = pm

    @property
    def pm(self) -> "GdmdPluginManager":
        if self._pm is None:
            from gdmd.manager import build_plugin_manager

            self._pm = build_plugin_manager()
        return self._pm


def plugin_manager(ctx: typer.Context) -> "GdmdPluginManager":
    """The plugin manager of the application running the command."""
    session: Session = ctx.obj
    return session.pm


def display() -> "Display":
    """The progress display of a command, on the terminal."""
    from gdmd.progress import Display

    return Display.on_console(console())


def open_run(
    ctx: typer.Context, run_dir: str, device: str | None, dtype: str | None, *, rewards: bool
) -> Any:
    """Open a finished run for sampling on ``--device`` in ``--dtype`` (both checked)."""
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
        plugin_manager(ctx), device=chosen_device, dtype=chosen_dtype, rewards=rewards
    )
