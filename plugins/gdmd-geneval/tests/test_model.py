"""The model path on tiny random-weight Mask2Former and CLIP models saved to disk, the
``geneval`` reward built from them, and GenEval evaluation of a folder."""

from __future__ import annotations

import json

import pytest
import torch

from gdmd.interfaces import BuildContext
from gdmd.manager import build_plugin_manager
from gdmd.rewards.loading import RewardLoadError
from gdmd.testing import assert_reward_contract
from gdmd.testing.tiny_rewards import save_tiny_clip
from gdmd_geneval.config import GenEvalConfig
from gdmd_geneval.evaluate import evaluate_folder, evaluate_images
from gdmd_geneval.model import (
    COCO_TO_GENEVAL,
    ClipColorClassifier,
    InputGeometry,
    Mask2FormerDetector,
)
from gdmd_geneval.prompts import GENEVAL_CLASSES
from gdmd_geneval.reward import build_geneval
from gdmd_geneval.rules import COLORS, Detection, GenEvalSpecError, PromptSpec, Rules

COCO_NAMES = [{v: k for k, v in COCO_TO_GENEVAL.items()}.get(c, c) for c in GENEVAL_CLASSES]
DOG = COCO_NAMES.index("dog")
PROMPTS = ["a photo of a dog", "a photo of a cat", "a photo of a dog left of a cat"]


def save_tiny_mask2former(directory, labels=COCO_NAMES, favour=DOG):
    """A random Mask2Former (tiny Swin backbone) whose class head favours ``favour``, so
    its detections have real scores; with the preprocessor_config.json of the hub repos."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

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
        model.class_predictor.bias[favour] += 12.0
    model.save_pretrained(directory)
    processor = {
        "image_processor_type": "Mask2FormerImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 64, "longest_edge": 96},
        "size_divisor": 32,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval")
    detector = save_tiny_mask2former(root / "mask2former")
    clip = save_tiny_clip(root / "clip")
    return detector, clip


@pytest.fixture
def ctx():
    return BuildContext(
        device=torch.device("cpu"), dtype=torch.float32, generator=torch.Generator().manual_seed(0)
    )


def _reward(models, ctx, **keys):
    return build_geneval(
        GenEvalConfig(detector=str(models[0]), clip_model=str(models[1]), **keys), ctx
    )


def _images(n, size=(48, 40), seed=1):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_detections_are_ranked_instances_with_boxes_that_bound_their_masks(models, ctx):
    detector = _reward(models, ctx).evaluator.detector
    assert isinstance(detector, Mask2FormerDetector)
    assert "computer mouse" in detector.labels and "mouse" not in detector.labels
    found = detector(_images(2), min_score=0.0)
    assert len(found) == 2
    for detections in found:
        assert 0 < len(detections) <= 8  # at most num_queries
        scores = [d.score for d in detections]
        assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
        assert detections[0].label == "dog"  # the favoured class
        for d in detections:
            assert d.mask.shape == (48, 40) and d.mask.dtype == torch.bool
            rows = d.mask.any(1).nonzero().flatten()
            cols = d.mask.any(0).nonzero().flatten()
            assert d.box == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (100, 2000), (2000, 100), (800, 900)])
def test_resizing_follows_transformers_size_rule(size):
    from transformers.image_transforms import get_size_with_aspect_ratio

    geometry = InputGeometry(shortest_edge=800, longest_edge=1333)
    assert geometry.resized(*size) == tuple(get_size_with_aspect_ratio(size, 800, 1333))


def test_input_pixels_follow_the_processor_arithmetic(tmp_path):
    unit = {"size": {"shortest_edge": 40, "longest_edge": 60}, "size_divisor": 32,
            "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.5]}  # fmt: skip
    bytes_scale = {**unit, "do_rescale": False, "image_mean": [127.5, 102.0, 76.5],
                   "image_std": [51.0, 63.75, 127.5], "size": 40, "max_size": 60}  # fmt: skip
    images = _images(2, size=(30, 50))
    results = []
    for name, cfg in (("unit", unit), ("bytes", bytes_scale)):
        (tmp_path / name).write_text(json.dumps(cfg))
        results.append(InputGeometry.from_file(tmp_path / name).pixels(images))
    (first, size), (second, size2) = results
    # 40 / 30 * 50 > 60: the longer side is capped at 60, the shorter becomes 36.
    assert size == size2 == (36, 60) and first.shape == (2, 3, 64, 64)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first[:, :, :36, :60].mean(dim=(0, 2, 3)) * torch.tensor(
        [0.2, 0.25, 0.5]) + torch.tensor([0.5, 0.4, 0.3]), images.mean(dim=(0, 2, 3)), atol=0.02,
        rtol=0)  # fmt: skip
    assert first[:, :, 36:].abs().sum() == 0 and first[:, :, :, 60:].abs().sum() == 0


def test_the_verdict_is_the_rules_on_the_detections(models, ctx):
    reward = _reward(models, ctx, threshold=0.2)
    images = _images(3, seed=4)
    scores = reward(images, PROMPTS)
    detections = reward.evaluator.detector(images, 0.0)
    rules = Rules(threshold=0.2)
    expected = [
        float(rules.evaluate(reward.resolver(p), d).correct)
        for p, d in zip(PROMPTS, detections, strict=True)
    ]
    assert scores.tolist() == expected
    # The class head favours dogs: the dog prompt is satisfied, the cat prompts are not.
    assert expected[0] == 1.0 and expected[1:] == [0.0, 0.0]
    # A threshold above every score fails every prompt.
    assert _reward(models, ctx, threshold=0.999)(images, PROMPTS).tolist() == [0.0, 0.0, 0.0]


def test_deterministic_and_shapes(models, ctx):
    reward = _reward(models, ctx, score="fraction", batch_size=2)
    assert reward.differentiable is False
    images = _images(5, size=(37, 52))
    prompts = [*PROMPTS, "a photo of a red dog", "a photo of two dogs"]
    first = reward(images, prompts)
    assert first.shape == (5,) and first.dtype == torch.float32
    assert torch.equal(first, reward(images, prompts))
    assert ((first >= 0) & (first <= 1)).all()


def test_meets_the_reward_contract(models, ctx):
    reward = _reward(models, ctx, threshold=0.2, batch_size=2)
    prompts = ["a photo of a dog", "a photo of a red car and a blue bench", "a photo of two dogs"]
    assert_reward_contract(reward, image_size=(40, 36), batch_size=3, prompts=prompts)


class FakeDetector:
    """Known detections, whatever the image (the detector's output, monkeypatched)."""

    labels = frozenset(GENEVAL_CLASSES)

    def __init__(self, detections):
        self.detections = detections
        self.calls = 0

    def __call__(self, images, min_score=0.0):
        self.calls += 1
        return [list(self.detections) for _ in range(images.shape[0])]


def _mask(box, size=(48, 40)):
    mask = torch.zeros(size, dtype=torch.bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


SCENE = [
    Detection("dog", 0.95, (24.0, 8.0, 36.0, 20.0), _mask((24, 8, 36, 20))),
    Detection("bench", 0.8, (2.0, 8.0, 14.0, 20.0), _mask((2, 8, 14, 20))),
    Detection("car", 0.7, (2.0, 30.0, 14.0, 44.0), _mask((2, 30, 14, 44))),
]


def test_a_known_scene_gives_known_verdicts(models, ctx, monkeypatch):
    reward = _reward(models, ctx, score="fraction")
    monkeypatch.setattr(reward.evaluator, "detector", FakeDetector(SCENE))
    asked = []

    def colors(image, detections, label):
        asked.append((label, len(detections)))
        return ["red" if label == "car" else "white" for _ in detections]

    monkeypatch.setattr(reward.evaluator, "colors", colors)
    prompts = {
        "a photo of a dog right of a bench": 1.0,
        "a photo of a dog left of a bench": 0.5,
        "a photo of a red car": 1.0,
        "a photo of a blue car": 0.0,
        "a photo of a red car and a white dog": 1.0,
        "a photo of a red car and a blue dog": 0.5,
        "a photo of two dogs": 0.5,  # counting: the dog is found, but only one of it
        "a photo of a cat": 0.0,
    }
    scores = reward(_images(len(prompts)), list(prompts))
    assert scores.tolist() == list(prompts.values())
    # Colours are classified only for the objects colour clauses read.
    assert ("bench", 1) not in asked and ("car", 1) in asked


def test_colour_crops_put_the_object_on_grey(models, ctx):
    classifier = _reward(models, ctx).evaluator.colors
    assert isinstance(classifier, ClipColorClassifier)
    image = torch.rand(3, 48, 40)
    crop = classifier.crop(image, SCENE[0])
    assert crop.shape == (1, 3, 12, 12)
    torch.testing.assert_close(crop[0], image[:, 8:20, 24:36])  # the mask fills its box
    partial = Detection("dog", 0.9, (0.0, 0.0, 10.0, 10.0), _mask((0, 0, 5, 10)))
    crop = classifier.crop(image, partial)
    assert torch.all(crop[0, :, :, 5:] == 0.6)
    torch.testing.assert_close(crop[0, :, :, :5], image[:, :10, :5])
    named = classifier(image, SCENE, "dog")
    assert len(named) == 3 and set(named) <= set(COLORS)
    assert classifier(image, SCENE, "dog") == named and set(classifier.classifiers) == {"dog"}


def test_unreadable_prompts_and_unknown_objects_fail_before_any_model_runs(models, ctx):
    reward = _reward(models, ctx)
    fake = FakeDetector(SCENE)
    reward.evaluator.detector = fake
    with pytest.raises(GenEvalSpecError, match="'a red circle left of a blue square'"):
        reward(_images(2), ["a photo of a dog", "a red circle left of a blue square"])
    fake.labels = frozenset({"dog"})
    with pytest.raises(GenEvalSpecError, match="names 'cat', which the detector does not know"):
        reward(_images(1), ["a photo of a cat"])
    assert fake.calls == 0


def test_a_detector_without_the_coco_classes_is_refused(ctx, tmp_path, models):
    save_tiny_mask2former(tmp_path, labels=["dog", "cat"], favour=0)
    with pytest.raises(RewardLoadError, match="lacks 78 of GenEval's object classes"):
        build_geneval(GenEvalConfig(detector=str(tmp_path), clip_model=str(models[1])), ctx)


def test_the_hub_detector_while_offline_says_how_to_use_a_local_copy(ctx, monkeypatch, models):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardLoadError) as err:
        build_geneval(GenEvalConfig(clip_model=str(models[1])), ctx)
    message = str(err.value)
    assert "reward 'geneval'" in message
    assert "'facebook/mask2former-swin-small-coco-instance'" in message
    assert "HF_HUB_OFFLINE=1" in message and "preprocessor_config.json" in message


def test_metadata_option(models, ctx, tmp_path, monkeypatch):
    entry = {"tag": "counting", "include": [{"class": "dog", "count": 1}],
             "prompt": "dogs, at least one"}  # fmt: skip
    (tmp_path / "evaluation_metadata.jsonl").write_text(json.dumps(entry) + "\n")
    reward = _reward(models, ctx, metadata=str(tmp_path / "evaluation_metadata.jsonl"))
    monkeypatch.setattr(reward.evaluator, "detector", FakeDetector(SCENE))
    assert reward(_images(2), ["dogs, at least one", "a photo of a bench"]).tolist() == [1, 1]


def _write_geneval_folder(root, entries, images_per_prompt=2):
    from PIL import Image

    for i, entry in enumerate(entries):
        samples = root / f"{i:05d}" / "samples"
        samples.mkdir(parents=True)
        (root / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(entry))
        for j in range(images_per_prompt):
            Image.new("RGB", (40, 48), (30 * j, 90, 200)).save(samples / f"{j:04d}.png")
    (root / "00000" / "grid.png").write_bytes(b"not read")
    return root


def test_evaluate_folder_gives_per_task_and_overall_accuracy(models, ctx, tmp_path):
    reward = _reward(models, ctx)
    evaluator = reward.evaluator
    evaluator.detector = FakeDetector(SCENE)
    evaluator.colors = lambda image, detections, label: ["red" for _ in detections]
    entries = [
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}],
         "prompt": "a photo of a dog"},
        {"tag": "single_object", "include": [{"class": "cat", "count": 1}],
         "prompt": "a photo of a cat"},
        {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
         "prompt": "a photo of a red car"},
        {"tag": "position", "include": [{"class": "bench", "count": 1},
                                        {"class": "dog", "count": 1,
                                         "position": ["left of", 0]}],
         "prompt": "a photo of a dog left of a bench"},
    ]  # fmt: skip
    report = evaluate_folder(_write_geneval_folder(tmp_path / "images", entries), evaluator)
    summary = report.summary()
    assert summary["tasks"] == {
        "single_object": {"accuracy": 0.5, "correct": 2, "total": 4},
        "colors": {"accuracy": 1.0, "correct": 2, "total": 2},
        "position": {"accuracy": 0.0, "correct": 0, "total": 2},
    }
    assert summary["overall"] == pytest.approx(0.5)  # mean of the task accuracies
    assert (summary["images"], summary["prompts"]) == (8, 4)
    assert summary["correct_prompts"] == 0.5 and summary["correct_images"] == 0.5
    lines = report.write_jsonl(tmp_path / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["filename"].endswith("00000/samples/0000.png") and first["correct"] is True
    assert json.loads(first["metadata"]) == entries[0]
    assert json.loads(first["details"])["dog"] == [[24.0, 8.0, 36.0, 20.0, 0.95]]
    last = json.loads(lines[-1])
    assert last["reason"] == "expected dog left of target, found right of target"
    assert [c["satisfied"] for c in last["clauses"]] == [True, False]


def test_evaluate_images_takes_tensors_and_metadata(models, ctx):
    evaluator = _reward(models, ctx).evaluator
    evaluator.detector = FakeDetector(SCENE)
    spec = PromptSpec.from_metadata(
        {"tag": "two_object", "include": [{"class": "dog", "count": 1},
                                          {"class": "car", "count": 1}], "prompt": "p"}
    )  # fmt: skip
    report = evaluate_images(evaluator, [(spec, [torch.rand(3, 20, 20), torch.rand(3, 24, 20)])])
    assert report.overall == 1.0 and [r.filename for r in report.results] == [None, None]
    with pytest.raises(GenEvalSpecError, match="no images were evaluated"):
        evaluate_images(evaluator, []).overall  # noqa: B018
    with pytest.raises(GenEvalSpecError, match="holds no GenEval prompt folders"):
        evaluate_folder(models[1], evaluator)


def test_listed_by_the_plugin_manager_from_its_distribution():
    pm = build_plugin_manager()
    spec = pm.registries.get("reward", "geneval")
    assert (spec.plugin, spec.distribution) == ("geneval", "gdmd-geneval")
    config = spec.validate_config({"score": "fraction"})
    assert (config.threshold, config.counting_threshold, config.max_objects) == (0.3, 0.9, 16)
    assert config.position_margin == 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_verdicts_equal_the_cpu_ones(models, ctx):
    cuda = BuildContext(
        device=torch.device("cuda"), dtype=torch.float32, generator=torch.Generator()
    )
    images = _images(3, seed=4)
    on_cpu = _reward(models, ctx, threshold=0.2, score="fraction")(images, PROMPTS)
    on_gpu = _reward(models, cuda, threshold=0.2, score="fraction")(images.cuda(), PROMPTS)
    assert on_gpu.device.type == "cuda"
    assert on_gpu.cpu().tolist() == on_cpu.tolist()
