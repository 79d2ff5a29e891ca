"""``gdmd eval --prompts evaluation_metadata.jsonl`` with the ``geneval`` reward as a metric,
on a tiny random Mask2Former and CLIP: GenEval's task accuracies and overall score; and two
students compared with each other."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.manager import build_plugin_manager
from gdmd.testing.tiny_rewards import save_tiny_clip

gdmd_geneval = pytest.importorskip("gdmd_geneval")

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# One prompt of each task, lines as GenEval's prompts/create_prompts.py writes them.
METADATA = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}],
     "prompt": "a photo of a dog"},
    {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
     "prompt": "a photo of a cat and a dog"},
    {"tag": "counting", "include": [{"class": "dog", "count": 3}],
     "exclude": [{"class": "dog", "count": 4}], "prompt": "a photo of three dogs"},
    {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}],
     "prompt": "a photo of a red dog"},
    {"tag": "position", "include": [{"class": "bench", "count": 1},
                                    {"class": "dog", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a dog right of a bench"},
    {"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"},
                                      {"class": "bench", "count": 1, "color": "blue"}],
     "prompt": "a photo of a red dog and a blue bench"},
]  # fmt: skip


def _save_tiny_mask2former(directory):
    """A random Mask2Former on a tiny Swin with COCO's 80 class names, its class head tilted
    towards "dog" so that some detections pass GenEval's thresholds."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    from gdmd_geneval.model import COCO_TO_GENEVAL
    from gdmd_geneval.prompts import GENEVAL_CLASSES

    to_coco = {v: k for k, v in COCO_TO_GENEVAL.items()}
    labels = [to_coco.get(c, c) for c in GENEVAL_CLASSES]
    swin = SwinConfig(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=swin, num_labels=len(labels), hidden_dim=32, mask_feature_size=32,
        feature_size=32, encoder_feedforward_dim=32, dim_feedforward=32, num_attention_heads=2,
        encoder_layers=1, decoder_layers=2, num_queries=8,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )  # fmt: skip
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        model.class_predictor.bias[labels.index("dog")] += 12.0
    model.save_pretrained(directory)
    processor = {
        "image_processor_type": "Mask2FormerImageProcessor",
        "size": {"shortest_edge": 64, "longest_edge": 96},
        "size_divisor": 32,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory, teacher_dir):
    from train.conftest import tiny_recipe

    pm = build_plugin_manager(load_entrypoints=False)
    pm.register(gdmd_geneval)
    root = tmp_path_factory.mktemp("geneval-suite")
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(root / "runs", teacher_dir))
    result = CliRunner().invoke(make_app(pm), ["run", str(recipe), "--set", "train.steps=2"])
    assert result.exit_code == 0, result.output
    prompts = root / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in METADATA))
    detector = _save_tiny_mask2former(root / "mask2former")
    clip = save_tiny_clip(root / "clip")
    metrics = root / "geneval.toml"
    metrics.write_text(
        f'[metric.geneval]\ndetector = "{detector}"\nclip_model = "{clip}"\n'
        f'metadata = "{prompts}"\nscore = "fraction"\n\n[metric.red]\nkind = "channel"\n'
    )
    return pm, root / "runs" / "tiny", prompts, metrics


def test_geneval_task_accuracies_and_overall(setup, tmp_path) -> None:
    pm, run, prompts, metrics = setup
    out = tmp_path / "out"
    args = [
        "eval", str(run), "--prompts", str(prompts), "--metrics", str(metrics), "--teacher",
        "--teacher-steps", "3", "--seeds", "0,1", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(make_app(pm), args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(rows) == len(METADATA) * 2 * 2
    summary = json.loads((out / "eval.json").read_text())
    assert set(summary["geneval"]) == {"geneval"}  # the channel metric is not GenEval's
    values = set()
    for model in ("teacher", "tiny"):
        scores = summary["geneval"]["geneval"][model]
        assert list(scores["tasks"]) == list(TASKS) and scores["missing_tasks"] == []
        for task, accuracy in scores["tasks"].items():
            per_image = [
                r["metrics"]["geneval"]
                for r in rows
                if r["model"] == model and r["category"] == task
            ]
            assert len(per_image) == 2
            assert accuracy == pytest.approx(sum(per_image) / 2)
            assert 0.0 <= accuracy <= 1.0
            values.add(accuracy)
        assert scores["overall"] == pytest.approx(sum(scores["tasks"].values()) / len(TASKS))
    assert len(values) > 1  # the tiny detector passes some clauses and fails others
    markdown = (out / "eval.md").read_text()
    assert "## GenEval (geneval)" in markdown
    assert "| model | overall | " + " | ".join(TASKS) + " |" in markdown
    assert "<h2>GenEval (geneval)</h2>" in (out / "report.html").read_text()


def test_two_students_are_compared_with_each_other_and_the_teacher(setup, tmp_path) -> None:
    pm, run, prompts, _ = setup
    other = tmp_path / "runs" / "other"
    shutil.copytree(run, other)
    metrics = tmp_path / "m.toml"
    metrics.write_text('[metric.red]\nkind = "channel"\n')
    out = tmp_path / "out"
    args = [
        "eval", str(run), str(other), "--prompts", str(prompts), "--metrics", str(metrics),
        "--teacher", "--teacher-steps", "3", "--seeds", "0", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(make_app(pm), args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval.json").read_text())
    assert list(summary["models"]) == ["teacher", "tiny", "other"]
    pairs = summary["differences"]["red"]
    assert list(pairs) == ["tiny - teacher", "other - teacher", "tiny - other"]
    # The same weights: the same images, a difference of exactly 0.
    same = pairs["tiny - other"]["all"]
    assert same["mean"] == same["low"] == same["high"] == 0.0
    assert "geneval" not in summary  # no geneval metric this time
