"""Built-in prompt sources: ``list`` (prompts written in the recipe), ``text-file`` (a prompt a
line), ``table`` (a column of a JSONL, CSV, TSV or Parquet file), ``hf-dataset`` (a column of
a Hugging Face dataset) and ``toy``.

Each returns a :class:`gdmd.interfaces.PromptSource`: training prompts are drawn uniformly
with replacement using the generator the loop passes in, so a run's prompt stream is
reproducible and resumes exactly. The sources live in :mod:`gdmd.prompts`; this module only
registers them (and keeps the names other modules import from here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from gdmd import hookimpl
from gdmd.config import ComponentConfig
from gdmd.prompts.files import (
    TablePromptsConfig,
    TextFilePromptsConfig,
    build_table,
    build_text_file,
    read_prompt_file,
)
from gdmd.prompts.hf import HFDatasetPromptsConfig, build_hf_dataset
from gdmd.prompts.source import PromptFileError, PromptList
from gdmd.registry import Register

if TYPE_CHECKING:
    from gdmd.interfaces import BuildContext

__all__ = [
    "ListPromptsConfig",
    "PromptFileError",
    "PromptList",
    "TextFilePromptsConfig",
    "read_prompt_file",
]

Prompt = Annotated[str, Field(min_length=1)]


class ListPromptsConfig(ComponentConfig):
    """Prompts written in the recipe."""

    prompts: list[Prompt] = Field(min_length=1, description="Training prompts.")
    eval_prompts: list[Prompt] = Field(
        default_factory=list, description="Held-out prompts for samples and evaluation."
    )


def build_list(config: ListPromptsConfig, ctx: BuildContext) -> PromptList:
    return PromptList(config.prompts, config.eval_prompts)


@hookimpl
def gdmd_register_prompts(register: Register) -> None:
    """Register the ``list``, ``text-file``, ``table``, ``hf-dataset`` and ``toy`` prompt
    sources."""
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
        "table",
        build_table,
        config=TablePromptsConfig,
        summary="A column of a JSONL, CSV, TSV or Parquet file (path, column).",
    )
    register(
        "hf-dataset",
        build_hf_dataset,
        config=HFDatasetPromptsConfig,
        summary="A column of a Hugging Face dataset: hub id or local folder (name or path, "
        "split, column, streaming).",
    )
    register(
        "toy",
        build_toy_prompts,
        config=ToyPromptsConfig,
        summary="The toy shapes grammar: balanced training prompts, held-out evaluation prompts.",
    )
