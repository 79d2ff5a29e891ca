"""Prompt sources: where a run's training and evaluation prompts come from.

- :mod:`gdmd.prompts.source`: :class:`PromptList` (what every source builds) and the options
  every data source shares (``limit``, ``shuffle``, ``eval_count``);
- :mod:`gdmd.prompts.files`: ``text-file`` and ``table`` (JSONL, CSV, TSV, Parquet);
- :mod:`gdmd.prompts.hf`: ``hf-dataset`` (a hub id, or a folder from ``save_to_disk`` or of
  parquet files);
- :mod:`gdmd.prompts.starter`: the generator of the shipped starter prompt file.

They are registered by :mod:`gdmd.builtins.prompts`. Nothing here imports torch, pyarrow or
datasets at import time.
"""

from gdmd.prompts.files import read_prompt_file
from gdmd.prompts.source import PromptFileError, PromptList

__all__ = ["PromptFileError", "PromptList", "read_prompt_file"]
