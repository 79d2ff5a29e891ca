"""Built-in prompt sources: ``list`` (prompts written in the recipe) and ``text-file``.

Both return a :class:`gdmd.interfaces.PromptSource`: training prompts are drawn uniformly
with replacement using the generator the loop passes in, so a run's prompt stream is
reproducible and resumes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from gdmd import hookimpl
from gdmd.config import ComponentConfig
from gdmd.errors import GdmdError
from gdmd.registry import Register

if TYPE_CHECKING:
    import torch

    from gdmd.interfaces import BuildContext

Prompt = Annotated[str, Field(min_length=1)]


class PromptFileError(GdmdError):
    """A prompt file is missing, unreadable or empty."""

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


class ListPromptsConfig(ComponentConfig):
    """Prompts written in the recipe."""

    prompts: list[Prompt] = Field(min_length=1, description="Training prompts.")
    eval_prompts: list[Prompt] = Field(
        default_factory=list, description="Held-out prompts for samples and evaluation."
    )


class TextFilePromptsConfig(ComponentConfig):
    """Prompts read from text files, one per line; blank lines are skipped."""

    path: str = Field(
        min_length=1, description="Training prompts file (relative to the working directory)."
    )
    eval_path: str | None = Field(None, description="Optional evaluation prompts file.")


def read_prompt_file(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; a missing, unreadable or empty
    file raises :class:`PromptFileError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"cannot read prompt file {path}: {exc}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise PromptFileError(f"prompt file {path} has no prompts (it is empty or blank)")
    return prompts


def build_list(config: ListPromptsConfig, ctx: BuildContext) -> PromptList:
    return PromptList(config.prompts, config.eval_prompts)


def build_text_file(config: TextFilePromptsConfig, ctx: BuildContext) -> PromptList:
    eval_prompts = read_prompt_file(config.eval_path) if config.eval_path else []
    return PromptList(read_prompt_file(config.path), eval_prompts)


@hookimpl
def gdmd_register_prompts(register: Register) -> None:
    """Register the ``list``, ``text-file`` and ``toy`` prompt sources."""
    from gdmd.toy.factories import ToyPromptsConfig, build_toy_prompts

    register(
        "list",
        build_list,
        config=ListPromptsConfig,
        summary="Prompts listed in the recipe (prompts, eval_prompts).",
    )
    register(
        "text-file",
        build_text_file,
        config=TextFilePromptsConfig,
        summary="Prompts read from text files, one per line (path, eval_path).",
    )
    register(
        "toy",
        build_toy_prompts,
        config=ToyPromptsConfig,
        summary="The toy shapes grammar: balanced training prompts, held-out evaluation prompts.",
    )
