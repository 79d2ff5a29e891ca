"""Prompt sources read from data: ``text-file``, ``table`` and ``hf-dataset``.

Each is checked through a recipe, as a user meets it: what ``gdmd validate`` reports for a
missing file, folder, column or split (without reading the data), and what the built source
holds (cleaned prompts, shuffle with the run's generator, ``limit``, held-out evaluation
prompts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.errors import RecipeError
from gdmd.interfaces import BuildContext, PromptSource
from gdmd.prompts import PromptFileError
from gdmd.recipe import parse_recipe

TEACHER = {"teacher": {"kind": "tiny-unet"}}
PROMPTS = ["a red circle", "two blue squares", "a green star", "a cat", "a dog", "a boat"]


def recipe(pm: Any, table: dict[str, Any]) -> Any:
    return parse_recipe({**TEACHER, "prompts": table}, "r.toml", pm)


def problems(pm: Any, table: dict[str, Any]) -> list[str]:
    with pytest.raises(RecipeError) as info:
        recipe(pm, table)
    return info.value.problems


def build(pm: Any, table: dict[str, Any], seed: int = 0) -> Any:
    ctx = BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(seed),
    )
    source = recipe(pm, table).prompts.build(ctx)
    assert isinstance(source, PromptSource)
    return source


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of the test's own: relative prompt paths are read from it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# -- text-file -----------------------------------------------------------------------------


def test_missing_prompt_file_names_file_and_key(gdmd_pm: Any, in_tmp: Path) -> None:
    assert problems(gdmd_pm, {"kind": "text-file", "path": "prompts/nope.txt"}) == [
        "r.toml: [prompts] path: prompt file prompts/nope.txt does not exist (relative paths "
        f"are read from the working directory, {in_tmp})"
    ]


def test_validate_exits_2_naming_the_missing_prompt_file(gdmd_pm: Any, in_tmp: Path) -> None:
    (in_tmp / "r.toml").write_text(
        '[teacher]\nkind = "tiny-unet"\n[prompts]\nkind = "text-file"\npath = "missing.txt"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(make_app(gdmd_pm), ["validate", "r.toml"])
    assert result.exit_code == 2
    assert "r.toml: [prompts] path: prompt file missing.txt does not exist" in result.output


def test_text_file_relative_to_the_working_directory(gdmd_pm: Any, in_tmp: Path) -> None:
    (in_tmp / "sub").mkdir()
    (in_tmp / "sub" / "p.txt").write_text("\n".join(PROMPTS) + "\n\n   \n", encoding="utf-8")
    source = build(gdmd_pm, {"kind": "text-file", "path": "sub/p.txt"})
    assert source.prompts == PROMPTS and source.evaluation_prompts() == []


def test_shuffle_limit_and_eval_count(gdmd_pm: Any, in_tmp: Path) -> None:
    (in_tmp / "p.txt").write_text("\n".join(PROMPTS), encoding="utf-8")
    table = {"kind": "text-file", "path": "p.txt", "shuffle": True, "eval_count": 2, "limit": 3}
    first, again = build(gdmd_pm, table, seed=0), build(gdmd_pm, table, seed=0)
    assert (first.prompts, first.eval_prompts) == (again.prompts, again.eval_prompts)
    assert len(first.eval_prompts) == 2 and len(first.prompts) == 3
    assert not set(first.eval_prompts) & set(first.prompts)
    assert set(first.eval_prompts) | set(first.prompts) <= set(PROMPTS)
    order = torch.randperm(len(PROMPTS), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [PROMPTS[i] for i in order]
    assert first.eval_prompts == shuffled[:2] and first.prompts == shuffled[2:5]
    other = build(gdmd_pm, {**table, "limit": 4}, seed=1)
    assert other.eval_prompts + other.prompts != shuffled[:6]


def test_unshuffled_keeps_file_order(gdmd_pm: Any, in_tmp: Path) -> None:
    (in_tmp / "p.txt").write_text("\n".join(PROMPTS), encoding="utf-8")
    source = build(gdmd_pm, {"kind": "text-file", "path": "p.txt", "eval_count": 1, "limit": 2})
    assert source.eval_prompts == PROMPTS[:1] and source.prompts == PROMPTS[1:3]


def test_eval_count_conflicts_and_overreach(gdmd_pm: Any, in_tmp: Path) -> None:
    (in_tmp / "p.txt").write_text("\n".join(PROMPTS), encoding="utf-8")
    lines = problems(
        gdmd_pm, {"kind": "text-file", "path": "p.txt", "eval_path": "p.txt", "eval_count": 2}
    )
    assert len(lines) == 1 and "eval_count holds out training prompts" in lines[0]
    with pytest.raises(PromptFileError, match="eval_count = 6 would leave none to train on"):
        build(gdmd_pm, {"kind": "text-file", "path": "p.txt", "eval_count": 6})


# -- table ---------------------------------------------------------------------------------


def test_jsonl_column(gdmd_pm: Any, in_tmp: Path) -> None:
    rows = [{"prompt": p, "tag": "x"} for p in PROMPTS] + [{"prompt": "  "}, {"prompt": None}]
    write_jsonl(in_tmp / "meta.jsonl", rows)
    source = build(gdmd_pm, {"kind": "table", "path": "meta.jsonl", "column": "prompt"})
    assert source.prompts == PROMPTS


def test_csv_and_tsv_columns(gdmd_pm: Any, in_tmp: Path) -> None:
    (in_tmp / "draw.csv").write_text(
        'Prompts,Category\n"a cat, sitting",Animals\n,Empty\na dog,Animals\n', encoding="utf-8"
    )
    source = build(gdmd_pm, {"kind": "table", "path": "draw.csv", "column": "Prompts"})
    assert source.prompts == ["a cat, sitting", "a dog"]
    (in_tmp / "parti.tsv").write_text("Prompt\tCategory\na boat\tX\na car\tY\n", encoding="utf-8")
    source = build(gdmd_pm, {"kind": "table", "path": "parti.tsv", "column": "Prompt"})
    assert source.prompts == ["a boat", "a car"]


def test_parquet_column(gdmd_pm: Any, in_tmp: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"caption": PROMPTS + [None, ""], "n": list(range(8))}), "c.parquet")
    source = build(gdmd_pm, {"kind": "table", "path": "c.parquet", "column": "caption"})
    assert source.prompts == PROMPTS
    assert problems(gdmd_pm, {"kind": "table", "path": "c.parquet", "column": "text"}) == [
        "r.toml: [prompts] column: c.parquet has no column 'text'; its columns are 'caption', 'n'"
    ]


def test_table_validation_reads_only_the_header(gdmd_pm: Any, in_tmp: Path) -> None:
    # The second line is not JSON: validation must not reach it, the run must.
    (in_tmp / "t.jsonl").write_text('{"prompt": "a cat"}\nnot json\n', encoding="utf-8")
    loaded = recipe(gdmd_pm, {"kind": "table", "path": "t.jsonl", "column": "prompt"})
    with pytest.raises(PromptFileError, match="t.jsonl line 2: not JSON"):
        loaded.prompts.build(None)


def test_table_errors(gdmd_pm: Any, in_tmp: Path) -> None:
    write_jsonl(in_tmp / "t.jsonl", [{"prompt": "a"}])
    (in_tmp / "d.csv").write_text("Prompts,Category\na,b\n", encoding="utf-8")
    (in_tmp / "notes.txt").write_text("a\n", encoding="utf-8")
    assert problems(gdmd_pm, {"kind": "table", "path": "t.jsonl", "column": "caption"}) == [
        "r.toml: [prompts] column: t.jsonl has no column 'caption'; its columns are 'prompt'"
    ]
    assert problems(gdmd_pm, {"kind": "table", "path": "d.csv", "column": "prompt"}) == [
        "r.toml: [prompts] column: d.csv has no column 'prompt'; its columns are 'Prompts', "
        "'Category'"
    ]
    lines = problems(gdmd_pm, {"kind": "table", "path": "notes.txt", "column": "prompt"})
    assert lines == [
        "r.toml: [prompts] format: cannot tell the format of notes.txt from its suffix '.txt'; "
        "set format to one of jsonl, csv, tsv, parquet"
    ]
    lines = problems(gdmd_pm, {"kind": "table", "path": "gone.csv", "column": "prompt"})
    assert lines[0].startswith("r.toml: [prompts] path: prompt table gone.csv does not exist")
    lines = problems(
        gdmd_pm,
        {
            "kind": "table",
            "path": "t.jsonl",
            "column": "prompt",
            "eval_path": "d.csv",
            "format": "jsonl",
        },
    )
    assert lines == ["r.toml: [prompts] eval_path: table d.csv line 1: not JSON (Expecting value)"]


def test_non_text_values_are_named(gdmd_pm: Any, in_tmp: Path) -> None:
    write_jsonl(in_tmp / "t.jsonl", [{"prompt": "a"}, {"prompt": 3}])
    with pytest.raises(PromptFileError, match=r"column 'prompt': row 1 holds int 3, not text"):
        build(gdmd_pm, {"kind": "table", "path": "t.jsonl", "column": "prompt"})


def test_table_eval_path(gdmd_pm: Any, in_tmp: Path) -> None:
    write_jsonl(in_tmp / "train.jsonl", [{"prompt": p} for p in PROMPTS])
    write_jsonl(in_tmp / "eval.jsonl", [{"prompt": "held out"}])
    source = build(
        gdmd_pm,
        {"kind": "table", "path": "train.jsonl", "eval_path": "eval.jsonl", "column": "prompt"},
    )
    assert source.prompts == PROMPTS and source.evaluation_prompts() == ["held out"]


# -- hf-dataset ----------------------------------------------------------------------------


@pytest.fixture
def saved(in_tmp: Path) -> Path:
    """A DatasetDict saved with save_to_disk (train, test) and one Dataset."""
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_dict({"caption": PROMPTS + [""], "id": list(range(7))})
    test = datasets.Dataset.from_dict({"caption": ["held a", "held b"], "id": [0, 1]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(in_tmp / "dd"))
    train.save_to_disk(str(in_tmp / "one"))
    return in_tmp


def test_hf_saved_dataset_dict(gdmd_pm: Any, saved: Path) -> None:
    source = build(
        gdmd_pm,
        {"kind": "hf-dataset", "path": "dd", "column": "caption", "eval_split": "test"},
    )
    assert source.prompts == PROMPTS and source.evaluation_prompts() == ["held a", "held b"]
    source = build(gdmd_pm, {"kind": "hf-dataset", "path": "one", "column": "caption"})
    assert source.prompts == PROMPTS


def test_hf_validation_reads_metadata(gdmd_pm: Any, saved: Path) -> None:
    assert problems(gdmd_pm, {"kind": "hf-dataset", "path": "dd", "column": "text"}) == [
        "r.toml: [prompts] column: dd has no column 'text'; its columns are 'caption', 'id'"
    ]
    assert problems(
        gdmd_pm, {"kind": "hf-dataset", "path": "dd", "split": "val", "column": "caption"}
    ) == ["r.toml: [prompts] split: dd has no split 'val'; its splits are train, test"]
    lines = problems(gdmd_pm, {"kind": "hf-dataset", "path": "nowhere", "column": "caption"})
    assert lines[0].startswith("r.toml: [prompts] path: dataset folder nowhere does not exist")
    (saved / "empty").mkdir()
    lines = problems(gdmd_pm, {"kind": "hf-dataset", "path": "empty", "column": "caption"})
    assert "holds neither a dataset written by save_to_disk" in lines[0]
    lines = problems(gdmd_pm, {"kind": "hf-dataset", "column": "caption"})
    assert lines == [
        "r.toml: [prompts]: give the dataset as name (a hub id) or path (a local folder)"
    ]
    lines = problems(
        gdmd_pm,
        {"kind": "hf-dataset", "path": "dd", "column": "caption", "streaming": True},
    )
    assert lines == ["r.toml: [prompts]: streaming reads limit prompts; set limit"]


def test_hf_parquet_folder_streaming(gdmd_pm: Any, saved: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (saved / "pq" / "data").mkdir(parents=True)
    rows = [f"caption {i}" for i in range(50)]
    pq.write_table(pa.table({"text": rows}), saved / "pq" / "data" / "train-0.parquet")
    assert problems(gdmd_pm, {"kind": "hf-dataset", "path": "pq", "column": "caption"}) == [
        "r.toml: [prompts] column: pq has no column 'caption'; its columns are 'text'"
    ]
    whole = build(gdmd_pm, {"kind": "hf-dataset", "path": "pq", "column": "text"})
    assert whole.prompts == rows
    table = {
        "kind": "hf-dataset",
        "path": "pq",
        "column": "text",
        "streaming": True,
        "limit": 5,
        "eval_count": 2,
    }
    streamed = build(gdmd_pm, table)
    assert streamed.eval_prompts == rows[:2] and streamed.prompts == rows[2:7]
    shuffled = build(gdmd_pm, {**table, "shuffle": True})
    assert shuffled.prompts == build(gdmd_pm, {**table, "shuffle": True}).prompts
    assert shuffled.eval_prompts + shuffled.prompts != rows[:7]
    assert set(shuffled.prompts) <= set(rows)


def test_hf_hub_id_offline_is_a_clear_error(gdmd_pm: Any, in_tmp: Path) -> None:
    pytest.importorskip("datasets")
    table = {"kind": "hf-dataset", "name": "nobody/no-such-captions", "column": "caption"}
    recipe(gdmd_pm, table)  # a hub id is not checked by validation (no network)
    with pytest.raises(PromptFileError, match="cannot read dataset nobody/no-such-captions"):
        build(gdmd_pm, table)


def test_missing_datasets_package(gdmd_pm: Any, in_tmp: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    table = {"kind": "hf-dataset", "name": "org/captions", "column": "caption"}
    with pytest.raises(PromptFileError, match=r"needs the datasets package: pip install"):
        build(gdmd_pm, table)


def test_missing_pyarrow_for_parquet(gdmd_pm: Any, in_tmp: Path, monkeypatch) -> None:
    import sys

    (in_tmp / "c.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    lines = problems(gdmd_pm, {"kind": "table", "path": "c.parquet", "column": "caption"})
    assert lines == [
        "r.toml: [prompts] column: reading Parquet needs pyarrow: pip install 'gdmd[data]'"
    ]


def test_prompt_modules_import_no_heavy_packages() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gdmd.builtins.prompts, gdmd.prompts.starter\n"
        "heavy = [m for m in ('torch', 'datasets', 'pyarrow') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
