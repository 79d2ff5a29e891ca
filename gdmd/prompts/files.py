"""Prompt sources read from local files: ``text-file`` (a prompt a line) and ``table``
(one column of a JSONL, CSV, TSV or Parquet file).

Validation checks what it can without reading a whole file: the file exists, and a table's
header (the CSV/TSV first row, the first JSONL object, the Parquet schema) has the column.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationInfo, field_validator

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

TableFormat = Literal["jsonl", "csv", "tsv", "parquet"]

#: File suffixes ``format = "auto"`` recognises.
SUFFIX_FORMATS: dict[str, TableFormat] = {
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}

DATA_EXTRA = "pip install 'gdmd[data]'"


def _where(path: Path) -> str:
    """How a relative path is read, for messages: from the working directory."""
    if path.is_absolute():
        return ""
    return f" (relative paths are read from the working directory, {os.getcwd()})"


def check_file(value: str, what: str = "prompt file") -> str:
    """``value`` if it names an existing file, else a ValueError saying what is wrong."""
    path = resolve(value)
    if not path.exists():
        raise ValueError(f"{what} {value} does not exist{_where(path)}")
    if not path.is_file():
        raise ValueError(f"{what} {value} is not a file")
    return value


def read_prompt_file(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; a missing, unreadable or empty
    file raises :class:`PromptFileError` naming it."""
    path = resolve(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"cannot read prompt file {path}: {exc}") from None
    prompts = clean(text.splitlines(), str(path))
    if not prompts:
        raise PromptFileError(f"prompt file {path} has no prompts (it is empty or blank)")
    return prompts


# -- text-file -----------------------------------------------------------------------------


class TextFilePromptsConfig(SourceOptions):
    """Prompts read from text files, one per line; blank lines are skipped."""

    path: str = Field(
        min_length=1, description="Training prompts file (relative to the working directory)."
    )
    eval_path: str | None = Field(None, description="Optional evaluation prompts file.")
    limit: Limit = None
    shuffle: Shuffle = False
    eval_count: EvalCount = 0

    @field_validator("path", "eval_path")
    @classmethod
    def _exists(cls, value: str | None) -> str | None:
        return None if value is None else check_file(value)

    def has_eval_source(self) -> bool:
        return self.eval_path is not None


def build_text_file(config: TextFilePromptsConfig, ctx: BuildContext | None) -> PromptList:
    eval_prompts = read_prompt_file(config.eval_path) if config.eval_path else []
    return finish(
        read_prompt_file(config.path), config, ctx, f"prompt file {config.path}", eval_prompts
    )


# -- table ---------------------------------------------------------------------------------


def table_format(path: str | Path, declared: str = "auto") -> TableFormat:
    """The format of a table file: ``declared``, or read from the suffix for ``"auto"``."""
    if declared != "auto":
        return declared  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise ValueError(
            f"cannot tell the format of {path} from its suffix {suffix or '(none)'!r}; "
            f"set format to one of {', '.join(SUFFIX_FORMATS.values())}"
        )
    return SUFFIX_FORMATS[suffix]


def _pyarrow_parquet():  # type: ignore[no-untyped-def]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PromptFileError(f"reading Parquet needs pyarrow: {DATA_EXTRA}") from None
    return pq


def table_columns(path: str | Path, fmt: TableFormat) -> list[str]:
    """The column names of a table, read from its header only (never the whole file)."""
    path = resolve(path)
    try:
        if fmt == "parquet":
            return list(_pyarrow_parquet().read_schema(path).names)
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if fmt in ("csv", "tsv"):
                header = next(csv.reader(handle, delimiter="\t" if fmt == "tsv" else ","), None)
                if header is None:
                    raise PromptFileError(f"table {path} is empty (no header row)")
                return [name.strip() for name in header]
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    return list(_json_object(line, path, number))
            raise PromptFileError(f"table {path} is empty (no JSON line)")
    except PromptFileError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PromptFileError(f"cannot read table {path}: {exc}") from None
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet
        raise PromptFileError(f"cannot read table {path} as {fmt}: {exc}") from None


def _json_object(line: str, path: Path, number: int) -> dict[str, object]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"table {path} line {number}: not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise PromptFileError(
            f"table {path} line {number}: expected a JSON object, got {type(value).__name__}"
        )
    return value


def check_column(path: str, fmt: TableFormat, column: str) -> None:
    """Raise ValueError when the table's header lacks ``column``, listing the columns."""
    try:
        columns = table_columns(path, fmt)
    except PromptFileError as exc:
        raise ValueError(str(exc)) from None
    if column not in columns:
        shown = ", ".join(repr(c) for c in columns[:20])
        raise ValueError(f"{path} has no column {column!r}; its columns are {shown}")


def read_table(path: str | Path, fmt: TableFormat, column: str) -> list[str]:
    """The cleaned prompts of one column of a table file."""
    path = resolve(path)
    where = f"table {path} column {column!r}"
    if fmt == "parquet":
        pq = _pyarrow_parquet()
        try:
            values = pq.read_table(path, columns=[column]).column(column).to_pylist()
        except Exception as exc:
            raise PromptFileError(f"cannot read {where}: {exc}") from None
        return clean(values, where)
    values = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if fmt in ("csv", "tsv"):
                reader = csv.DictReader(handle, delimiter="\t" if fmt == "tsv" else ",")
                if reader.fieldnames is None or column not in reader.fieldnames:
                    raise PromptFileError(f"{where}: no such column")
                values = [row[column] for row in reader]
            else:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    record = _json_object(line, path, number)
                    if column not in record:
                        raise PromptFileError(f"{where}: line {number} has no {column!r} key")
                    values.append(record[column])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PromptFileError(f"cannot read {where}: {exc}") from None
    return clean(values, where)


class TablePromptsConfig(SourceOptions):
    """Prompts from one column of a JSONL, CSV, TSV or Parquet file."""

    path: str = Field(
        min_length=1,
        description="Table file (relative to the working directory): .jsonl (one JSON object "
        "a line), .csv, .tsv or .parquet (needs pyarrow: the data extra).",
    )
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet"] = Field(
        "auto", description="File format; auto: from the path's suffix."
    )
    column: str = Field(
        min_length=1,
        description="The column (JSONL key, CSV header) holding the prompts, e.g. 'prompt' "
        "(GenEval's metadata), 'Prompts' (DrawBench), 'Prompt' (PartiPrompts).",
    )
    eval_path: str | None = Field(
        None, description="Optional evaluation table, same format and column."
    )
    limit: Limit = None
    shuffle: Shuffle = False
    eval_count: EvalCount = 0

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str) -> str:
        return check_file(value, "prompt table")

    @field_validator("format")
    @classmethod
    def _format_known(cls, value: str, info: ValidationInfo) -> str:
        path = info.data.get("path")
        if path is not None:
            table_format(path, value)
        return value

    @field_validator("column")
    @classmethod
    def _column_exists(cls, value: str, info: ValidationInfo) -> str:
        path, fmt = info.data.get("path"), info.data.get("format")
        if path is not None and fmt is not None:
            check_column(path, table_format(path, fmt), value)
        return value

    @field_validator("eval_path")
    @classmethod
    def _eval_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        check_file(value, "evaluation table")
        fmt, column = info.data.get("format"), info.data.get("column")
        if fmt is not None and column is not None:
            check_column(value, table_format(value, fmt), column)
        return value

    def has_eval_source(self) -> bool:
        return self.eval_path is not None


def build_table(config: TablePromptsConfig, ctx: BuildContext | None) -> PromptList:
    fmt = table_format(config.path, config.format)
    eval_prompts: list[str] = []
    if config.eval_path is not None:
        eval_prompts = read_table(
            config.eval_path, table_format(config.eval_path, config.format), config.column
        )
    prompts = read_table(config.path, fmt, config.column)
    return finish(
        prompts, config, ctx, f"table {config.path} column {config.column!r}", eval_prompts
    )
