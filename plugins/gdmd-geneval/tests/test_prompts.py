"""GenEval prompts -> clauses: the template parser and the metadata file."""

from __future__ import annotations

import json

import pytest

from gdmd_geneval.prompts import GENEVAL_CLASSES, PromptResolver, parse_prompt, read_metadata
from gdmd_geneval.rules import GenEvalSpecError

# Lines as GenEval's prompts/create_prompts.py writes them (its templates, its plural rule).
OFFICIAL = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}],
     "prompt": "a photo of a bench"},
    {"tag": "single_object", "include": [{"class": "orange", "count": 1}],
     "prompt": "a photo of an orange"},
    {"tag": "two_object", "include": [{"class": "toilet", "count": 1},
                                      {"class": "computer mouse", "count": 1}],
     "prompt": "a photo of a toilet and a computer mouse"},
    {"tag": "counting", "include": [{"class": "bus", "count": 3}],
     "exclude": [{"class": "bus", "count": 4}], "prompt": "a photo of three buses"},
    {"tag": "counting", "include": [{"class": "skis", "count": 2}],
     "exclude": [{"class": "skis", "count": 3}], "prompt": "a photo of two skises"},
    {"tag": "colors", "include": [{"class": "orange", "count": 1, "color": "orange"}],
     "prompt": "a photo of an orange orange"},
    {"tag": "colors", "include": [{"class": "tv remote", "count": 1, "color": "white"}],
     "prompt": "a photo of a white tv remote"},
    {"tag": "position", "include": [{"class": "bench", "count": 1},
                                    {"class": "dog", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a dog right of a bench"},
    {"tag": "position", "include": [{"class": "hot dog", "count": 1},
                                    {"class": "stop sign", "count": 1, "position": ["below", 0]}],
     "prompt": "a photo of a stop sign below a hot dog"},
    {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                      {"class": "bench", "count": 1, "color": "blue"}],
     "prompt": "a photo of a red car and a blue bench"},
]  # fmt: skip


@pytest.mark.parametrize("entry", OFFICIAL, ids=[e["prompt"] for e in OFFICIAL])
def test_the_parser_gives_the_official_metadata(entry):
    assert parse_prompt(entry["prompt"]).to_metadata() == entry


def test_common_plurals_spelling_and_case():
    spec = parse_prompt("A photo of four  People.")
    assert spec.to_metadata()["include"] == [{"class": "person", "count": 4}]
    assert parse_prompt("a photo of two knives").include[0].label == "knife"
    assert parse_prompt("a photo of two benches").include[0].label == "bench"


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle left of a blue square",  # not a GenEval object
        "two dogs",  # not "a photo of"
        "a photo of a dog next to a cat",  # no such relation
        "a photo of a red car and a bench",  # colour on one object only
        "a photo of a teal car",  # not one of the ten colours
        "a photo of a red dog left of a cat",  # position prompts have no colours
    ],
)
def test_prompts_outside_the_templates_are_refused_clearly(prompt):
    with pytest.raises(GenEvalSpecError) as err:
        parse_prompt(prompt)
    message = str(err.value)
    assert repr(prompt) in message
    assert "a photo of a dog right of a bench" in message and "`metadata`" in message


def test_eighty_classes():
    assert len(GENEVAL_CLASSES) == len(set(GENEVAL_CLASSES)) == 80


def _write(path, entries):
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n\n")
    return path


def test_the_metadata_file_wins_over_the_parser(tmp_path):
    custom = {"tag": "counting", "include": [{"class": "dog", "count": 2}],
              "prompt": "a photo of two dogs"}  # fmt: skip
    resolver = PromptResolver(_write(tmp_path / "m.jsonl", [*OFFICIAL, custom]))
    assert resolver("a photo of two dogs").exclude == ()  # the file's entry, not the template
    assert resolver("A photo of a bench.").to_metadata() == OFFICIAL[0]
    # Not in the file, but parseable.
    assert resolver("a photo of a cat").include[0].label == "cat"
    with pytest.raises(GenEvalSpecError, match="is not in the GenEval metadata .*m.jsonl"):
        resolver("a cat on a mat")
    assert len(read_metadata(tmp_path / "m.jsonl")) == len(OFFICIAL) + 1


def test_bad_metadata_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(OFFICIAL[0]) + "\n{not json}\n")
    with pytest.raises(GenEvalSpecError, match=r"bad.jsonl:2: not JSON"):
        read_metadata(bad)
    bad.write_text(json.dumps({"tag": "colors", "prompt": "p", "include": []}) + "\n")
    with pytest.raises(GenEvalSpecError, match=r"bad.jsonl:1: 'include' must be a non-empty"):
        read_metadata(bad)
    with pytest.raises(GenEvalSpecError, match="cannot read the GenEval metadata file"):
        read_metadata(tmp_path / "missing.jsonl")
    conflicting = [OFFICIAL[0], {**OFFICIAL[0], "tag": "two_object"}]
    with pytest.raises(GenEvalSpecError, match="has two different entries"):
        PromptResolver(_write(tmp_path / "c.jsonl", conflicting))
