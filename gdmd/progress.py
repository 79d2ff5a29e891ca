"""Progress for long work outside the training loop (training a toy teacher, sampling).

A rich progress bar on a terminal; on a pipe or a CI log, a plain line every tenth of the
way, so logs stay readable.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Update = Callable[[int, str], None]


def console() -> Console:
    """The console progress and status lines go to (stderr, so stdout stays parseable)."""
    return Console(stderr=True, file=sys.stderr)


@contextlib.contextmanager
def task(description: str, total: int, out: Console | None = None) -> Iterator[Update]:
    """Yield ``update(done, info)`` for a task of ``total`` units."""
    out = out or console()
    if out.is_terminal:
        bar = Progress(
            TextColumn(f"[bold]{description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=out,
        )
        with bar:
            handle = bar.add_task(description, total=total, info="")

            def update(done: int, info: str = "") -> None:
                bar.update(handle, completed=done, info=info)

            yield update
        return
    every = max(1, total // 10)
    out.print(f"{description}: 0/{total}", highlight=False)

    def log(done: int, info: str = "") -> None:
        if done % every == 0 or done == total:
            out.print(f"{description}: {done}/{total} {info}".rstrip(), highlight=False)

    yield log
