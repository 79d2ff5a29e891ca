"""Readers for the public text-to-image prompt sets, in the files their authors publish.

Every reader returns a list of :class:`EvalPrompt` (the prompt, its category, and whatever else
the file says about it), in file order. :func:`read_prompt_set` picks the reader from the file
name, or from ``format=``:

=================  ==========================================  ==============================
``format``         file                                        category
=================  ==========================================  ==============================
``hpsv2``          HPSv2 benchmark: a folder of ``anime.json``,  the style (the file's stem)
                   ``concept-art.json``, ``paintings.json``,
                   ``photo.json`` (each a JSON list of
                   strings), or one such file
``drawbench``      DrawBench CSV, columns ``Prompts``,          ``Category``
                   ``Category`` (``.csv``)
``parti``          PartiPrompts TSV, columns ``Prompt``,        ``Category``; ``Challenge``
                   ``Category``, ``Challenge``, ``Note``        and ``Note`` in metadata
                   (``.tsv``)
``geneval``        GenEval ``evaluation_metadata.jsonl``: one    ``tag``; metadata is the
                   JSON object a line with ``tag``, ``prompt``   whole object
                   and ``include`` (``.jsonl``)
``t2i-compbench``  T2I-CompBench(++) ``examples/dataset/*.txt``: the file name without its
                   one prompt a line (``color_val.txt``, ...),   split: ``color_val.txt`` ->
                   or a folder of them                          ``color``
``text``           any other ``.txt``: one prompt a line         none
=================  ==========================================  ==============================

Where the official files come from (none ships in a pip package): HPSv2's benchmark prompts
are the ``datasets/benchmark/*.json`` files of the ``zhwang/HPDv2`` dataset (what
``hpsv2.benchmark_prompts`` downloads); DrawBench is Imagen's Google sheet exported as CSV;
PartiPrompts is ``PartiPrompts.tsv`` in ``google-research/parti``; GenEval is
``prompts/evaluation_metadata.jsonl`` in ``djghosh13/geneval``; T2I-CompBench's prompts are
``examples/dataset/`` in ``Karine-Huang/T2I-CompBench``.

Layouts are those described in the suites' repositories; two details are assumptions stated
here: in DrawBench and PartiPrompts, extra columns are kept in ``metadata`` and blank cells of
optional columns read as ``""``; in text files, blank lines are skipped (T2I-CompBench's files
have none in their bodies) and surrounding whitespace is stripped. A malformed file is a
:class:`PromptSetError` naming the file and the line (and column, where the parser knows it).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdmd.errors import GdmdError

__all__ = [
    "FORMATS",
    "HPSV2_STYLES",
    "EvalPrompt",
    "PromptSetError",
    "detect_format",
    "read_drawbench",
    "read_geneval",
    "read_hpsv2",
    "read_parti",
    "read_prompt_set",
    "read_t2i_compbench",
    "read_text",
]

#: The four styles of the HPSv2 benchmark, in the order the benchmark reports them.
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
#: T2I-CompBench(++) categories, as its prompt files name them.
T2I_COMPBENCH_CATEGORIES = (
    "color",
    "shape",
    "texture",
    "spatial",
    "non_spatial",
    "complex",
    "3d_spatial",
    "numeracy",
)
_T2I_NAME = re.compile(
    r"^(?P<category>" + "|".join(T2I_COMPBENCH_CATEGORIES) + r")"
    r"(?:_(?P<split>train|val|test))?(?:_(?P<subset>\w+))?$"
)


class PromptSetError(GdmdError):
    """A prompt-set file is missing, malformed, or lacks a column its format needs."""

    exit_code = 2


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its text, its category (``None`` if the set has none) and the
    rest of what the file says about it."""

    prompt: str
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PromptSetError(f"prompt set {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PromptSetError(f"cannot read prompt set {path}: {err}") from None


def _non_empty(prompts: list[EvalPrompt], path: Path) -> list[EvalPrompt]:
    if not prompts:
        raise PromptSetError(f"prompt set {path} has no prompts")
    return prompts


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines."""
    return [
        (number, line.strip())
        for number, line in enumerate(_read_text(path).splitlines(), start=1)
        if line.strip()
    ]


def read_text(path: str | Path) -> list[EvalPrompt]:
    """A plain text file: one prompt a line, no category."""
    path = Path(path)
    return _non_empty([EvalPrompt(text, None, {}) for _, text in _lines(path)], path)


def _t2i_file(path: Path) -> list[EvalPrompt]:
    match = _T2I_NAME.match(path.stem)
    if match is None:
        raise PromptSetError(
            f"{path}: not a T2I-CompBench prompt file name: expected <category>[_train|_val]"
            f"[_subset].txt with a category among {', '.join(T2I_COMPBENCH_CATEGORIES)}"
        )
    metadata = {k: v for k, v in match.groupdict().items() if k != "category" and v}
    metadata["file"] = path.name
    return [
        EvalPrompt(text, match["category"], dict(metadata, line=number))
        for number, text in _lines(path)
    ]


def read_t2i_compbench(path: str | Path) -> list[EvalPrompt]:
    """T2I-CompBench(++) prompt files: one prompt a line, the category from the file name.

    ``color_val.txt`` -> ``color``; ``complex_val_action.txt`` -> ``complex`` with metadata
    ``split = "val"``, ``subset = "action"``; ``3d_spatial.txt`` -> ``3d_spatial``. ``path``
    may be a folder: every ``*.txt`` in it is read, in name order.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise PromptSetError(f"prompt set {path}: the folder has no .txt files")
        return _non_empty([p for file in files for p in _t2i_file(file)], path)
    return _non_empty(_t2i_file(path), path)


def _hpsv2_file(path: Path) -> list[EvalPrompt]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise PromptSetError(
            f"{path}: line {err.lineno}, column {err.colno}: not valid JSON: {err.msg}"
        ) from None
    if not isinstance(data, list):
        raise PromptSetError(
            f"{path}: expected a JSON list of prompt strings (the HPSv2 benchmark layout), "
            f"got a JSON {type(data).__name__}"
        )
    prompts = []
    for index, item in enumerate(data):
        if not isinstance(item, str) or not item.strip():
            raise PromptSetError(
                f"{path}: item {index} is {item!r}; every item must be a non-empty prompt string"
            )
        prompts.append(EvalPrompt(item.strip(), path.stem, {"index": index}))
    return prompts


def read_hpsv2(path: str | Path) -> list[EvalPrompt]:
    """The HPSv2 benchmark: a folder of style files, or one style file (``anime.json``, ...).

    Each file is a JSON list of prompt strings; the category is the style, the file's stem.
    A folder is read in :data:`HPSV2_STYLES` order, then any other ``*.json`` by name; one
    without any of the four styles is refused (it is probably not the benchmark).
    """
    path = Path(path)
    if not path.is_dir():
        return _non_empty(_hpsv2_file(path), path)
    files = {p.stem: p for p in path.glob("*.json")}
    if not any(style in files for style in HPSV2_STYLES):
        raise PromptSetError(
            f"prompt set {path}: no HPSv2 benchmark style file in the folder (expected "
            + ", ".join(f"{s}.json" for s in HPSV2_STYLES)
            + ")"
        )
    order = [s for s in HPSV2_STYLES if s in files] + sorted(set(files) - set(HPSV2_STYLES))
    return _non_empty([p for style in order for p in _hpsv2_file(files[style])], path)


def _table(
    path: Path, delimiter: str, prompt_column: str, required: tuple[str, ...]
) -> list[EvalPrompt]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as err:
        raise PromptSetError(f"{path}: line 1: cannot parse the header: {err}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise PromptSetError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} in the header "
            f"(line 1); it has {', '.join(repr(h) for h in header) or 'no columns'}"
        )
    prompts = []
    try:
        for row in reader:
            line = reader.line_num
            if None in row:
                raise PromptSetError(
                    f"{path}: line {line}: {len(header) + len(row[None])} fields, but the "
                    f"header has {len(header)}"
                )
            if all(not (v or "").strip() for v in row.values()):
                continue
            prompt = (row[prompt_column] or "").strip()
            if not prompt:
                column = header.index(prompt_column) + 1
                raise PromptSetError(
                    f"{path}: line {line}, column {column} ({prompt_column!r}): empty prompt"
                )
            category = (row.get("Category") or "").strip() or None
            metadata = {
                k: (v or "").strip() for k, v in row.items() if k not in (prompt_column, "Category")
            }
            prompts.append(EvalPrompt(prompt, category, dict(metadata, line=line)))
    except csv.Error as err:
        raise PromptSetError(f"{path}: line {reader.line_num}: {err}") from None
    return _non_empty(prompts, path)


def read_drawbench(path: str | Path) -> list[EvalPrompt]:
    """DrawBench's CSV: columns ``Prompts`` and ``Category`` (others kept in metadata)."""
    return _table(Path(path), ",", "Prompts", ("Prompts", "Category"))


def read_parti(path: str | Path) -> list[EvalPrompt]:
    """PartiPrompts' ``PartiPrompts.tsv``: columns ``Prompt``, ``Category``, ``Challenge``,
    ``Note``; ``Challenge`` and ``Note`` go to metadata."""
    return _table(Path(path), "\t", "Prompt", ("Prompt", "Category", "Challenge", "Note"))


def read_geneval(path: str | Path) -> list[EvalPrompt]:
    """GenEval's ``evaluation_metadata.jsonl``: one JSON object a line.

    Each object needs ``prompt`` and ``tag`` (the category: ``single_object``, ``two_object``,
    ``counting``, ``colors``, ``position``, ``color_attr``) and a list ``include``; the whole
    object is the metadata (GenEval's scorer reads it back per image).
    """
    path = Path(path)
    prompts = []
    for number, text in enumerate(_read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as err:
            raise PromptSetError(
                f"{path}: line {number}, column {err.colno}: not valid JSON: {err.msg}"
            ) from None
        if not isinstance(entry, dict):
            raise PromptSetError(f"{path}: line {number}: expected a JSON object")
        missing = [k for k in ("prompt", "tag", "include") if k not in entry]
        if missing:
            raise PromptSetError(
                f"{path}: line {number}: missing key(s) {', '.join(map(repr, missing))} "
                "(GenEval's metadata has prompt, tag and include)"
            )
        if not isinstance(entry["prompt"], str) or not entry["prompt"].strip():
            raise PromptSetError(f"{path}: line {number}: 'prompt' must be a non-empty string")
        if not isinstance(entry["tag"], str) or not isinstance(entry["include"], list):
            raise PromptSetError(
                f"{path}: line {number}: 'tag' must be a string and 'include' a list"
            )
        prompts.append(EvalPrompt(entry["prompt"].strip(), entry["tag"], entry))
    return _non_empty(prompts, path)


_READERS = {
    "hpsv2": read_hpsv2,
    "drawbench": read_drawbench,
    "parti": read_parti,
    "geneval": read_geneval,
    "t2i-compbench": read_t2i_compbench,
    "text": read_text,
}
#: Every format name :func:`read_prompt_set` accepts.
FORMATS = tuple(_READERS)


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its name (see the module's table).

    A folder is the HPSv2 benchmark if it holds ``.json`` files, T2I-CompBench if it holds
    T2I-CompBench ``.txt`` files; ``.json`` -> ``hpsv2``; ``.jsonl`` -> ``geneval``; ``.csv``
    -> ``drawbench``; ``.tsv`` -> ``parti``; ``.txt`` -> ``t2i-compbench`` when the name is
    one of its files (``color_val.txt``), else ``text``.
    """
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.json")):
            return "hpsv2"
        if any(_T2I_NAME.match(p.stem) for p in path.glob("*.txt")):
            return "t2i-compbench"
        raise PromptSetError(
            f"prompt set {path}: cannot tell the format of the folder (it holds neither the "
            "HPSv2 benchmark's .json files nor T2I-CompBench's .txt files); pass format="
        )
    suffix = path.suffix.lower()
    by_suffix = {".json": "hpsv2", ".jsonl": "geneval", ".csv": "drawbench", ".tsv": "parti"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix == ".txt":
        return "t2i-compbench" if _T2I_NAME.match(path.stem) else "text"
    raise PromptSetError(
        f"prompt set {path}: cannot tell the format from the name (extension {suffix or 'none'});"
        f" pass format= one of {', '.join(FORMATS)}"
    )


def read_prompt_set(path: str | Path, format: str | None = None) -> list[EvalPrompt]:
    """Read a prompt set in the format ``format`` (default: :func:`detect_format`)."""
    path = Path(path)
    if not path.exists():
        raise PromptSetError(f"prompt set {path} does not exist")
    name = format or detect_format(path)
    if name not in _READERS:
        raise PromptSetError(
            f"unknown prompt-set format {name!r}; known formats: {', '.join(FORMATS)}"
        )
    return _READERS[name](path)
