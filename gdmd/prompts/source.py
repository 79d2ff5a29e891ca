"""What every prompt source shares: the prompt list it builds and the options it takes.

A source reads its prompts (a text file, a table, a Hugging Face dataset), then
:func:`finish` cleans them the same way for every source: strip, drop empty ones, shuffle
with the run's generator, split off held-out evaluation prompts, cap at ``limit``.
Imports no torch at module level (plugins register these configs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

from pydantic import Field, model_validator

from gdmd.config import ComponentConfig
from gdmd.errors import GdmdError

if TYPE_CHECKING:
    import torch

    from gdmd.interfaces import BuildContext


class PromptFileError(GdmdError):
    """A prompt file, table or dataset is missing, unreadable, empty or lacks its column."""

    exit_code = 2


class PromptList:
    """A fixed list of training prompts plus a fixed list of evaluation prompts."""

    def __init__(self, prompts: Sequence[str], eval_prompts: Sequence[str] = ()) -> None:
        if not prompts:
            raise ValueError("a prompt source needs at least one training prompt")
        self.prompts = list(prompts)
        self.eval_prompts = list(eval_prompts)

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        """``n`` training prompts drawn uniformly with replacement using ``generator``."""
        import torch

        indices = torch.randint(
            len(self.prompts), (n,), generator=generator, device=generator.device
        )
        return [self.prompts[i] for i in indices.tolist()]

    def evaluation_prompts(self) -> list[str]:
        """The evaluation prompts (possibly empty)."""
        return list(self.eval_prompts)

    def __len__(self) -> int:
        return len(self.prompts)


#: ``limit``, ``shuffle`` and ``eval_count``: every source read from data declares them
#: last (so its own keys lead its documentation) with these types and defaults.
Limit = Annotated[
    int | None,
    Field(ge=1, description="Keep at most this many training prompts (after shuffle); unset: all."),
]
Shuffle = Annotated[
    bool,
    Field(
        description="Shuffle the prompts with the run's seeded generator before eval_count "
        "and limit take theirs (false: file order)."
    ),
]
EvalCount = Annotated[
    int,
    Field(
        ge=0,
        description="Hold out this many prompts (the first, after shuffle) as evaluation "
        "prompts, never trained on; 0: none. Not with an eval file or split.",
    ),
]


class SourceLimits(Protocol):
    """What :func:`finish` reads from a source's config."""

    @property
    def limit(self) -> int | None: ...

    @property
    def shuffle(self) -> bool: ...

    @property
    def eval_count(self) -> int: ...


class SourceOptions(ComponentConfig):
    """The base of every prompt source read from data (``text-file``, ``table``,
    ``hf-dataset``): subclasses declare ``limit: Limit = None``, ``shuffle: Shuffle = False``
    and ``eval_count: EvalCount = 0``, which :func:`finish` applies."""

    def has_eval_source(self) -> bool:
        """Whether the config names a separate evaluation file or split."""
        return False

    @model_validator(mode="after")
    def _one_eval_source(self) -> SourceOptions:
        if getattr(self, "eval_count", 0) and self.has_eval_source():
            raise ValueError(
                "eval_count holds out training prompts for evaluation; it cannot be combined "
                "with a separate evaluation file or split"
            )
        return self


def clean(prompts: Iterable[object], where: str) -> list[str]:
    """Prompts stripped, with empty ones (and missing values) dropped. A value that is not
    text raises :class:`PromptFileError` naming ``where`` and the row."""
    kept: list[str] = []
    for row, value in enumerate(prompts):
        if value is None:
            continue
        if not isinstance(value, str):
            raise PromptFileError(
                f"{where}: row {row} holds {type(value).__name__} {value!r:.40}, not text"
            )
        text = value.strip()
        if text:
            kept.append(text)
    return kept


def finish(
    prompts: Sequence[str],
    options: SourceLimits,
    ctx: BuildContext | None,
    where: str,
    eval_prompts: Sequence[str] = (),
) -> PromptList:
    """Shuffle (with ``ctx.generator``), hold out ``eval_count``, cap at ``limit``.

    ``prompts`` are already cleaned; ``where`` names the file or dataset in errors.
    """
    prompts = list(prompts)
    if not prompts:
        raise PromptFileError(f"{where} has no prompts (it is empty or every prompt is blank)")
    if options.shuffle:
        import torch

        if ctx is None:
            raise PromptFileError(f"{where}: shuffle needs the run's generator (a BuildContext)")
        order = torch.randperm(len(prompts), generator=ctx.generator).tolist()
        prompts = [prompts[i] for i in order]
    if options.eval_count:
        if options.eval_count >= len(prompts):
            raise PromptFileError(
                f"{where} has {len(prompts)} prompts; eval_count = {options.eval_count} would "
                "leave none to train on"
            )
        eval_prompts = prompts[: options.eval_count]
        prompts = prompts[options.eval_count :]
    if options.limit is not None:
        prompts = prompts[: options.limit]
    return PromptList(prompts, eval_prompts)


def resolve(path: str | Path) -> Path:
    """A prompt path as every source reads it: ``~`` expanded, relative to the working
    directory, never to the recipe file (one rule for every prompt path)."""
    return Path(path).expanduser()
