"""Prompt-set readers on small files written in each suite's published layout."""

from __future__ import annotations

import json

import pytest

from gdmd.eval.prompt_sets import (
    EvalPrompt,
    PromptSetError,
    detect_format,
    read_prompt_set,
)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_hpsv2_folder_reads_styles_in_benchmark_order(tmp_path):
    folder = tmp_path / "benchmark"
    folder.mkdir()
    _write(folder / "photo.json", json.dumps(["a dog on a beach", "a city at night"]))
    _write(folder / "anime.json", json.dumps(["a girl with blue hair"]))
    _write(folder / "concept-art.json", json.dumps(["a castle in the clouds"]))
    _write(folder / "paintings.json", json.dumps(["  sunflowers in a vase "]))
    prompts = read_prompt_set(folder)
    assert [(p.prompt, p.category) for p in prompts] == [
        ("a girl with blue hair", "anime"),
        ("a castle in the clouds", "concept-art"),
        ("sunflowers in a vase", "paintings"),
        ("a dog on a beach", "photo"),
        ("a city at night", "photo"),
    ]
    assert prompts[4].metadata == {"index": 1}
    one = read_prompt_set(folder / "photo.json")
    assert [p.category for p in one] == ["photo", "photo"]


def test_hpsv2_malformed_json_names_line_and_column(tmp_path):
    bad = _write(tmp_path / "anime.json", '[\n  "a cat",\n  "a dog"\n  "a cow"\n]')
    with pytest.raises(PromptSetError, match=r"anime.json: line 4, column 3: not valid JSON"):
        read_prompt_set(bad)
    not_list = _write(tmp_path / "photo.json", '{"prompts": []}')
    with pytest.raises(PromptSetError, match="expected a JSON list .* got a JSON dict"):
        read_prompt_set(not_list)
    with pytest.raises(PromptSetError, match=r"item 1 is 3"):
        read_prompt_set(_write(tmp_path / "paintings.json", '["ok", 3]'))


def test_hpsv2_folder_without_styles_is_refused(tmp_path):
    _write(tmp_path / "other.json", "[]")
    with pytest.raises(PromptSetError, match="no HPSv2 benchmark style file"):
        read_prompt_set(tmp_path, format="hpsv2")


def test_drawbench_csv(tmp_path):
    path = _write(
        tmp_path / "drawbench.csv",
        "Prompts,Category\n"
        'A red colored car.,Colors\n'
        '"A storefront with ""Diffusion"" written on it.",Text\n'
        "\n"
        '"A pear cut into\nseven pieces",Counting\n',
    )
    prompts = read_prompt_set(path)
    assert prompts == [
        EvalPrompt("A red colored car.", "Colors", {"line": 2}),
        EvalPrompt('A storefront with "Diffusion" written on it.', "Text", {"line": 3}),
        EvalPrompt("A pear cut into\nseven pieces", "Counting", {"line": 6}),
    ]


def test_drawbench_missing_column_is_named(tmp_path):
    path = _write(tmp_path / "db.csv", "Prompt,Category\na cat,Animals\n")
    with pytest.raises(PromptSetError) as err:
        read_prompt_set(path)
    assert "missing column(s) 'Prompts' in the header (line 1)" in str(err.value)
    assert "'Prompt', 'Category'" in str(err.value)


def test_drawbench_extra_field_and_empty_prompt_name_the_line(tmp_path):
    path = _write(tmp_path / "db.csv", "Prompts,Category\na cat,Animals\na dog,Animals,oops\n")
    with pytest.raises(PromptSetError, match=r"db.csv: line 3: 3 fields, but the header has 2"):
        read_prompt_set(path)
    path = _write(tmp_path / "db2.csv", "Category,Prompts\nAnimals,a cat\nAnimals,\n")
    with pytest.raises(PromptSetError, match=r"line 3, column 2 \('Prompts'\): empty prompt"):
        read_prompt_set(path)


def test_parti_tsv_keeps_challenge_and_note(tmp_path):
    path = _write(
        tmp_path / "PartiPrompts.tsv",
        "Prompt\tCategory\tChallenge\tNote\n"
        "bond\tAbstract\tBasic\tBiology-inspired concepts with multiple meanings\n"
        "a tiger\tAnimals\tBasic\t\n",
    )
    prompts = read_prompt_set(path)
    assert prompts[0] == EvalPrompt(
        "bond",
        "Abstract",
        {
            "Challenge": "Basic",
            "Note": "Biology-inspired concepts with multiple meanings",
            "line": 2,
        },
    )
    assert prompts[1].metadata == {"Challenge": "Basic", "Note": "", "line": 3}


def test_parti_missing_columns_are_all_named(tmp_path):
    path = _write(tmp_path / "p.tsv", "Prompt\tCategory\na tiger\tAnimals\n")
    with pytest.raises(PromptSetError, match="missing column.s. 'Challenge', 'Note'"):
        read_prompt_set(path)


def test_geneval_jsonl_keeps_the_whole_line(tmp_path):
    lines = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}],
         "prompt": "a photo of a bench"},
        {"tag": "color_attr", "include": [{"class": "cup", "count": 1, "color": "red"}],
         "exclude": [{"class": "cup", "count": 2}], "prompt": "a photo of a red cup"},
    ]
    path = _write(
        tmp_path / "evaluation_metadata.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n"
    )
    prompts = read_prompt_set(path)
    assert [(p.prompt, p.category) for p in prompts] == [
        ("a photo of a bench", "single_object"),
        ("a photo of a red cup", "color_attr"),
    ]
    assert prompts[1].metadata == lines[1]


def test_geneval_errors_name_the_line(tmp_path):
    good = json.dumps({"tag": "counting", "include": [], "prompt": "two dogs"})
    path = _write(tmp_path / "m.jsonl", good + '\n  {"tag": "counting", "prompt": }\n')
    with pytest.raises(PromptSetError, match=r"m.jsonl: line 2, column 33: not valid JSON"):
        read_prompt_set(path)
    path = _write(tmp_path / "n.jsonl", good + '\n{"prompt": "x", "include": []}\n')
    with pytest.raises(PromptSetError, match=r"n.jsonl: line 2: missing key.s. 'tag'"):
        read_prompt_set(path)


def test_t2i_compbench_category_from_the_file_name(tmp_path):
    path = _write(tmp_path / "color_val.txt", "a blue bench and a green car\n\na red apple\n")
    prompts = read_prompt_set(path)
    assert prompts == [
        EvalPrompt(
            "a blue bench and a green car",
            "color",
            {"split": "val", "file": "color_val.txt", "line": 1},
        ),
        EvalPrompt("a red apple", "color", {"split": "val", "file": "color_val.txt", "line": 3}),
    ]
    action = _write(tmp_path / "complex_val_action.txt", "a man riding a horse\n")
    assert read_prompt_set(action)[0].category == "complex"
    assert read_prompt_set(action)[0].metadata["subset"] == "action"
    spatial3d = _write(tmp_path / "3d_spatial.txt", "a cup in front of a plate\n")
    assert read_prompt_set(spatial3d)[0].category == "3d_spatial"
    # A folder of them: every file, in name order.
    categories = [p.category for p in read_prompt_set(tmp_path)]
    assert categories == ["3d_spatial", "color", "color", "complex"]


def test_plain_text_and_a_t2i_name_forced_to_text(tmp_path):
    path = _write(tmp_path / "prompts.txt", "  a cat \n\na dog\n")
    assert read_prompt_set(path) == [EvalPrompt("a cat"), EvalPrompt("a dog")]
    t2i = _write(tmp_path / "shape_val.txt", "a round clock\n")
    assert read_prompt_set(t2i, format="text") == [EvalPrompt("a round clock")]
    with pytest.raises(PromptSetError, match="not a T2I-CompBench prompt file name"):
        read_prompt_set(path, format="t2i-compbench")


def test_format_detection(tmp_path):
    assert detect_format(tmp_path / "x.csv") == "drawbench"
    assert detect_format(tmp_path / "PartiPrompts.tsv") == "parti"
    assert detect_format(tmp_path / "evaluation_metadata.jsonl") == "geneval"
    assert detect_format(tmp_path / "anime.json") == "hpsv2"
    assert detect_format(tmp_path / "texture_val.txt") == "t2i-compbench"
    assert detect_format(tmp_path / "mine.txt") == "text"
    with pytest.raises(PromptSetError, match=r"extension \.parquet.*pass format="):
        detect_format(tmp_path / "x.parquet")
    with pytest.raises(PromptSetError, match="cannot tell the format of the folder"):
        detect_format(tmp_path)


def test_unknown_format_missing_and_empty_files(tmp_path):
    path = _write(tmp_path / "p.txt", "a cat\n")
    with pytest.raises(PromptSetError, match="unknown prompt-set format 'coco'; known formats"):
        read_prompt_set(path, format="coco")
    with pytest.raises(PromptSetError, match="does not exist"):
        read_prompt_set(tmp_path / "missing.csv")
    with pytest.raises(PromptSetError, match="has no prompts"):
        read_prompt_set(_write(tmp_path / "empty.csv", "Prompts,Category\n"))
    with pytest.raises(PromptSetError, match="cannot read prompt set"):
        (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
        read_prompt_set(tmp_path / "bin.txt")
