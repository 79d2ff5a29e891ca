"""Progress for long work: training a toy teacher, distilling, sampling, evaluating.

A rich progress bar on a terminal; on a pipe or a CI log, a plain line every tenth of the
way, so logs stay readable. :class:`Display` is how code without screen code of its own
(:mod:`gdmd.run.session`) reports progress: the CLI supplies one drawing on a console,
library callers get a silent one. Importing this module imports no rich (only using it does).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

#: ``update(done, info)``: ``done`` units of the task finished; ``info`` a short status text.
Update = Callable[[int, str], None]


def console() -> Console:
    """The console progress and status lines go to (stderr, so stdout stays parseable)."""
    from rich.console import Console

    return Console(stderr=True, file=sys.stderr)


@contextlib.contextmanager
def task(
    description: str, total: int, out: Console | None = None, *, start: int = 0
) -> Iterator[Update]:
    """Yield ``update(done, info)`` for a task of ``total`` units, ``start`` of them done."""
    out = out or console()
    if out.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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
            handle = bar.add_task(description, total=total, completed=start, info="")

            def update(done: int, info: str = "") -> None:
                bar.update(handle, completed=done, info=info)

            yield update
        return
    every = max(1, total // 10)
    out.print(f"{description}: {start}/{total}", highlight=False)

    def log(done: int, info: str = "") -> None:
        if done % every == 0 or done == total:
            out.print(f"{description}: {done}/{total} {info}".rstrip(), highlight=False)

    yield log


def _ignore(done: int, info: str = "") -> None:
    return None


@contextlib.contextmanager
def _silent_task(description: str, total: int, start: int = 0) -> Iterator[Update]:
    yield _ignore


@dataclass
class Display:
    """What long-running library code shows, supplied by its caller.

    ``note(text)``: a one-line message. ``status(text)``: a context shown while something
    without a count runs (building models). ``task(description, total, start)``: a context
    yielding ``update(done, info)``.
    """

    note: Callable[[str], None] = field(default=lambda text: None)
    status: Callable[[str], ContextManager[object]] = field(
        default=lambda text: contextlib.nullcontext()
    )
    task: Callable[[str, int, int], ContextManager[Update]] = field(default=_silent_task)

    @classmethod
    def on_console(cls, out: Console) -> Display:
        """Notes, a spinner and progress bars on ``out`` (plain lines when not a terminal)."""
        from rich.markup import escape

        def status(text: str) -> ContextManager[object]:
            return out.status(text, spinner="dots")

        def bar(description: str, total: int, start: int = 0) -> ContextManager[Update]:
            return task(description, total, out, start=start)

        return cls(note=lambda text: out.print(escape(text)), status=status, task=bar)
