"""GenEval over many images: per-task accuracy and the overall score, in GenEval's layout.

GenEval's generation scripts write one folder per prompt::

    <folder>/00000/metadata.jsonl      the prompt's metadata object (one JSON object)
    <folder>/00000/samples/0000.png    its images (GenEval: 4 per prompt)
    <folder>/00001/...

:func:`evaluate_folder` reads that layout; :func:`evaluate_images` takes (metadata, images)
pairs directly. Both return a :class:`GenEvalReport`: one :class:`ImageResult` per image
(written by :meth:`GenEvalReport.write_jsonl` with the keys of the official
``results.jsonl``: filename, tag, prompt, correct, reason, metadata, details) and the
summary of the official ``summary_scores.py``: each task's accuracy over its images, and the
overall score, the unweighted mean of the task accuracies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gdmd_geneval.model import GenEvalEvaluator
from gdmd_geneval.rules import TASKS, GenEvalSpecError, PromptSpec, Verdict

__all__ = [
    "GenEvalReport",
    "ImageResult",
    "TaskScore",
    "evaluate_folder",
    "evaluate_images",
    "read_image",
]

_PROMPT_DIR = re.compile(r"^\d+$")
_IMAGE = re.compile(r"^\d+\.png$")


@dataclass(frozen=True)
class ImageResult:
    """One image's verdict for its prompt."""

    spec: PromptSpec
    verdict: Verdict
    filename: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The official ``results.jsonl`` record, plus ``clauses`` (per-clause results)."""
        return {
            "filename": self.filename,
            "tag": self.spec.tag,
            "prompt": self.spec.prompt,
            "correct": self.verdict.correct,
            "reason": self.verdict.reason,
            "metadata": json.dumps(self.spec.to_metadata()),
            "details": json.dumps(
                {
                    label: [[*d.box, d.score] for d in found]
                    for label, found in self.verdict.kept.items()
                }
            ),
            "clauses": [
                {
                    "kind": c.kind,
                    "index": c.index,
                    "clause": c.description,
                    "satisfied": c.satisfied,
                    "reason": c.reason,
                }
                for c in self.verdict.clauses
            ],
        }


@dataclass(frozen=True)
class TaskScore:
    """One task's accuracy: correct images over images."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


@dataclass(frozen=True)
class GenEvalReport:
    """The results of many images and GenEval's summary of them."""

    results: tuple[ImageResult, ...]

    @property
    def tasks(self) -> dict[str, TaskScore]:
        """Accuracy per task, for the tasks present, in GenEval's task order."""
        scores = {}
        for task in TASKS:
            mine = [r for r in self.results if r.spec.tag == task]
            if mine:
                scores[task] = TaskScore(sum(r.verdict.correct for r in mine), len(mine))
        return scores

    @property
    def overall(self) -> float:
        """The unweighted mean of the task accuracies (GenEval's overall score)."""
        tasks = self.tasks
        if not tasks:
            raise GenEvalSpecError("no images were evaluated, so there is no GenEval score")
        return sum(t.accuracy for t in tasks.values()) / len(tasks)

    def summary(self) -> dict[str, Any]:
        """``overall``, ``tasks`` (accuracy, correct, total each), and the image and prompt
        counts of the official summary (``correct_prompts``: prompts with a correct image)."""
        by_prompt: dict[str, bool] = {}
        for r in self.results:
            key = json.dumps(r.spec.to_metadata(), sort_keys=True)
            by_prompt[key] = by_prompt.get(key, False) or r.verdict.correct
        return {
            "overall": self.overall,
            "tasks": {
                task: {"accuracy": s.accuracy, "correct": s.correct, "total": s.total}
                for task, s in self.tasks.items()
            },
            "images": len(self.results),
            "correct_images": sum(r.verdict.correct for r in self.results) / len(self.results),
            "prompts": len(by_prompt),
            "correct_prompts": sum(by_prompt.values()) / len(by_prompt),
        }

    def write_jsonl(self, path: str | Path) -> Path:
        """Write one record per image (see :meth:`ImageResult.to_json`); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for result in self.results:
                out.write(json.dumps(result.to_json()) + "\n")
        return path


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as ``[3, H, W]`` float in ``[0, 1]`` (RGB, EXIF orientation applied)."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except OSError as err:
        raise GenEvalSpecError(f"cannot read the image {path}: {err}") from err
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def evaluate_images(
    evaluator: GenEvalEvaluator,
    samples: Iterable[tuple[PromptSpec | Mapping[str, Any], Sequence[torch.Tensor | str | Path]]],
) -> GenEvalReport:
    """Judge every image of every (metadata, images) pair.

    ``metadata`` is a :class:`~gdmd_geneval.rules.PromptSpec` or a GenEval metadata object;
    each image is a tensor ``[3, H, W]`` in ``[0, 1]`` or the path of an image file (whose
    name is then recorded). Images of one prompt that share a size go through the detector
    together.
    """
    results: list[ImageResult] = []
    for entry, images in samples:
        spec = entry if isinstance(entry, PromptSpec) else PromptSpec.from_metadata(entry)
        evaluator.check_labels(spec)
        loaded: list[tuple[str | None, torch.Tensor]] = []
        for image in images:
            if isinstance(image, torch.Tensor):
                loaded.append((None, image))
            else:
                loaded.append((str(image), read_image(image)))
        sizes: dict[tuple[int, ...], list[int]] = {}
        for i, (_, tensor) in enumerate(loaded):
            if tensor.ndim != 3 or tensor.shape[0] != 3:
                raise GenEvalSpecError(
                    f"images for {spec.prompt!r} must be [3, H, W], got {list(tensor.shape)}"
                )
            sizes.setdefault(tuple(tensor.shape), []).append(i)
        verdicts: dict[int, Verdict] = {}
        for indices in sizes.values():
            batch = torch.stack([loaded[i][1] for i in indices])
            judged = evaluator.judge(batch, [spec] * len(indices))
            verdicts.update(zip(indices, judged, strict=True))
        results += [ImageResult(spec, verdicts[i], loaded[i][0]) for i in range(len(loaded))]
    return GenEvalReport(tuple(results))


def evaluate_folder(folder: str | Path, evaluator: GenEvalEvaluator) -> GenEvalReport:
    """Judge a folder in GenEval's layout (see the module): every numbered prompt folder's
    ``metadata.jsonl`` and its ``samples/<n>.png`` images, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GenEvalSpecError(f"the GenEval image folder {folder} does not exist")
    samples = []
    for prompt_dir in sorted(p for p in folder.iterdir() if _PROMPT_DIR.match(p.name)):
        if not prompt_dir.is_dir():
            continue
        metadata_file = prompt_dir / "metadata.jsonl"
        try:
            entry = json.loads(metadata_file.read_text(encoding="utf-8"))
        except OSError as err:
            raise GenEvalSpecError(f"cannot read {metadata_file}: {err.strerror}") from err
        except ValueError as err:
            raise GenEvalSpecError(f"{metadata_file}: not one JSON object: {err}") from err
        spec = PromptSpec.from_metadata(entry, str(metadata_file))
        images = sorted(
            p for p in (prompt_dir / "samples").glob("*.png") if _IMAGE.match(p.name)
        )
        samples.append((spec, images))
    if not samples:
        raise GenEvalSpecError(
            f"{folder} holds no GenEval prompt folders (<folder>/00000/metadata.jsonl and "
            "<folder>/00000/samples/0000.png, ...)"
        )
    return evaluate_images(evaluator, samples)
