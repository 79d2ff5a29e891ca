"""The ``hf-dataset`` prompt source: one column of a Hugging Face ``datasets`` dataset.

The dataset is a hub id (``name``; needs the hub or its cache), or a local folder (``path``)
written by ``save_to_disk`` or holding parquet files. ``datasets`` is imported inside the
factory only: validating a recipe reads a local folder's metadata (``dataset_info.json``, or
the first parquet file's schema) and never loads the data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gdmd.prompts.files import DATA_EXTRA, _pyarrow_parquet, _where
from gdmd.prompts.source import (
    EvalCount,
    Limit,
    PromptFileError,
    PromptList,
    Shuffle,
    SourceOptions,
    clean,
    finish,
    resolve,
)

if TYPE_CHECKING:
    from gdmd.interfaces import BuildContext

#: Rows a streamed dataset's shuffle buffer holds (``datasets``' own default is 1,000).
SHUFFLE_BUFFER = 10_000


class HFDatasetPromptsConfig(SourceOptions):
    """Prompts from one column of a Hugging Face dataset (hub id or local folder)."""

    name: str | None = Field(
        None,
        min_length=1,
        description="Hub dataset id, e.g. 'org/captions' (read from the hub, or its cache "
        "offline). Give name or path, not both.",
    )
    path: str | None = Field(
        None,
        min_length=1,
        description="Local folder (relative to the working directory) written by "
        "save_to_disk, or holding parquet files.",
    )
    subset: str | None = Field(
        None, description="The hub dataset's configuration (subset) name, if it has several."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    split: str = Field("train", min_length=1, description="Split the training prompts come from.")
    column: str = Field(min_length=1, description="Column holding the prompts.")
    eval_split: str | None = Field(
        None, description="Optional split read whole as evaluation prompts (e.g. 'test')."
    )
    streaming: bool = Field(
        False,
        description="Stream rows instead of downloading the split: reads only eval_count + "
        "limit non-empty prompts (limit is then required); shuffle uses a buffer of "
        f"{SHUFFLE_BUFFER:,} rows.",
    )
    limit: Limit = None
    shuffle: Shuffle = False
    eval_count: EvalCount = 0

    @field_validator("path")
    @classmethod
    def _folder_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        folder = resolve(value)
        if not folder.exists():
            raise ValueError(f"dataset folder {value} does not exist{_where(folder)}")
        if not folder.is_dir():
            raise ValueError(
                f'{value} is not a folder; for one file use kind = "table" or "text-file"'
            )
        _local_layout(folder)
        return value

    @field_validator("split", "eval_split")
    @classmethod
    def _split_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        path = info.data.get("path")
        if value is None or path is None:
            return value
        splits = _saved_splits(resolve(path))
        if splits is not None and value not in splits:
            raise ValueError(f"{path} has no split {value!r}; its splits are {', '.join(splits)}")
        if splits is None and info.field_name == "eval_split" and _is_saved_dataset(resolve(path)):
            raise ValueError(f"{path} holds one dataset without splits; eval_split needs several")
        return value

    @field_validator("column")
    @classmethod
    def _column_exists(cls, value: str, info: ValidationInfo) -> str:
        path, split = info.data.get("path"), info.data.get("split")
        if path is None or split is None:
            return value
        columns = _local_columns(resolve(path), split)
        if columns is not None and value not in columns:
            shown = ", ".join(repr(c) for c in columns[:20])
            raise ValueError(f"{path} has no column {value!r}; its columns are {shown}")
        return value

    @model_validator(mode="after")
    def _one_location(self) -> HFDatasetPromptsConfig:
        if (self.name is None) == (self.path is None):
            raise ValueError("give the dataset as name (a hub id) or path (a local folder)")
        if self.path is not None and (self.subset or self.revision):
            raise ValueError("subset and revision apply to a hub dataset (name), not to path")
        if self.streaming and self.limit is None:
            raise ValueError("streaming reads limit prompts; set limit")
        return self

    def has_eval_source(self) -> bool:
        return self.eval_split is not None


# -- a local folder's metadata, read without datasets ---------------------------------------


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()


def _saved_splits(folder: Path) -> list[str] | None:
    """The splits of a ``DatasetDict`` folder; ``None`` for any other layout."""
    index = folder / "dataset_dict.json"
    if not index.is_file():
        return None
    try:
        return [str(s) for s in json.loads(index.read_text(encoding="utf-8"))["splits"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read {index}: {exc}") from None


def _parquet_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.parquet"))


def _local_layout(folder: Path) -> str:
    """``"dict"``, ``"dataset"`` or ``"parquet"``; a ValueError for anything else."""
    if (folder / "dataset_dict.json").is_file():
        return "dict"
    if _is_saved_dataset(folder):
        return "dataset"
    if _parquet_files(folder):
        return "parquet"
    raise ValueError(
        f"{folder} holds neither a dataset written by save_to_disk (dataset_info.json, "
        "dataset_dict.json) nor parquet files"
    )


def _local_columns(folder: Path, split: str) -> list[str] | None:
    """The column names of a local dataset's split, from metadata only; ``None`` when the
    folder cannot tell (the column is then checked when the run reads the data)."""
    layout = _local_layout(folder)
    if layout == "parquet":
        try:
            return list(_pyarrow_parquet().read_schema(_parquet_files(folder)[0]).names)
        except PromptFileError as exc:
            raise ValueError(str(exc)) from None
        except Exception as exc:
            first = _parquet_files(folder)[0]
            raise ValueError(f"cannot read the schema of {first}: {exc}") from None
    info = (folder / split if layout == "dict" else folder) / "dataset_info.json"
    try:
        features = json.loads(info.read_text(encoding="utf-8")).get("features")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {info}: {exc}") from None
    return list(features) if isinstance(features, dict) else None


# -- loading --------------------------------------------------------------------------------


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise PromptFileError(
            f'prompts kind "hf-dataset" needs the datasets package: {DATA_EXTRA}'
        ) from None
    return datasets


def _open_split(config: HFDatasetPromptsConfig, split: str, streaming: bool) -> Any:
    """The split as a ``datasets`` Dataset (or IterableDataset when ``streaming``)."""
    datasets = _datasets()
    if config.path is not None:
        folder = resolve(config.path).absolute()
        layout = _local_layout(folder)
        if layout != "parquet":
            saved = datasets.load_from_disk(str(folder))
            split_set = saved[split] if layout == "dict" else saved
            return split_set.to_iterable_dataset() if streaming else split_set
        return datasets.load_dataset(str(folder), split=split, streaming=streaming)
    return datasets.load_dataset(
        config.name, config.subset, split=split, revision=config.revision, streaming=streaming
    )


def _where_dataset(config: HFDatasetPromptsConfig, split: str) -> str:
    origin = f"dataset {config.name}" if config.name else f"dataset folder {config.path}"
    return f"{origin} split {split!r} column {config.column!r}"


def _read_split(
    config: HFDatasetPromptsConfig, split: str, count: int | None, seed: int | None
) -> list[str]:
    """The cleaned prompts of ``split``: all of them, or the first ``count`` non-empty ones
    of a stream (shuffled in a buffer with ``seed`` when given)."""
    where = _where_dataset(config, split)
    try:
        data = _open_split(config, split, streaming=count is not None)
        if config.column not in (data.column_names or [config.column]):
            raise PromptFileError(
                f"{where}: no such column; its columns are {', '.join(data.column_names)}"
            )
        if count is None:
            return clean(data[config.column], where)
        if seed is not None:
            data = data.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
        prompts: list[str] = []
        for row in data.select_columns([config.column]):
            prompts += clean([row[config.column]], where)
            if len(prompts) == count:
                break
        return prompts
    except PromptFileError:
        raise
    except Exception as exc:
        raise PromptFileError(f"cannot read {where}: {type(exc).__name__}: {exc}") from None


def build_hf_dataset(config: HFDatasetPromptsConfig, ctx: BuildContext | None) -> PromptList:
    where = _where_dataset(config, config.split)
    eval_prompts = _read_split(config, config.eval_split, None, None) if config.eval_split else []
    if not config.streaming:
        return finish(
            _read_split(config, config.split, None, None), config, ctx, where, eval_prompts
        )
    assert config.limit is not None  # the config's validator requires it
    seed = None
    if config.shuffle:
        import torch

        if ctx is None:
            raise PromptFileError(f"{where}: shuffle needs the run's generator (a BuildContext)")
        seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator))
    prompts = _read_split(config, config.split, config.eval_count + config.limit, seed)
    # The stream is already shuffled in its buffer; finish only splits and caps.
    return finish(prompts, config.model_copy(update={"shuffle": False}), ctx, where, eval_prompts)
