"""GenEval's rules, on plain detections: which objects count, and whether an image is correct.

GenEval (Ghosh et al., 2023, "GenEval: An Object-Focused Framework for Evaluating
Text-to-Image Alignment") judges an image by what an instance-segmentation model finds in it.
The rules below restate the official evaluator (``djghosh13/geneval``,
``evaluation/evaluate_images.py``) in our own words:

* **Which detections count.** Per class, the detections whose score is strictly above the
  threshold (0.3; 0.9 for prompts tagged ``counting``), most confident first, at most 16 of
  them. (The official overlap suppression is off by default, ``max_overlap = 1``; so here.)
* **Include clauses** ``{class, count[, color][, position]}`` must all hold. A clause needs
  at least ``count`` objects of its class; its colour and position are judged on its
  ``count`` most confident objects only. A colour clause needs all of them to be classified
  as that colour. A position clause ``[relation, j]`` needs every one of them to stand in
  ``relation`` to every object that include clause ``j`` matched; if clause ``j`` failed, it
  fails too. A clause whose colour failed is not judged on position.
* **Exclude clauses** ``{class, count}`` fail when ``count`` or more objects of the class were
  kept. (Counting prompts say "exactly n" as include ``n`` plus exclude ``n + 1``.)
* **Relative position** of box A to box B: the offset of their centres, each axis shrunk
  towards zero by ``margin * (size of A + size of B)`` along that axis (never past zero),
  then divided by the length of the unshrunk offset. A is "left of" B when the shrunk x
  component is below -0.5, "right of" above 0.5, "above" when the y component is below
  -0.5 (image rows grow downwards) and "below" above 0.5. When both shrunk components are
  (nearly) zero, the boxes are in no relation.

An image is correct when every clause holds. Nothing here imports torch or numpy: the
detector and the colour classifier are elsewhere (:mod:`gdmd_geneval.model`); the rules see
their output as :class:`Detection` objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gdmd.errors import GdmdError

__all__ = [
    "COLORS",
    "RELATIONS",
    "TASKS",
    "ClauseResult",
    "Detection",
    "ExcludeClause",
    "GenEvalSpecError",
    "IncludeClause",
    "PromptSpec",
    "Rules",
    "Verdict",
    "relative_position",
]

#: GenEval's six tasks, in the order its paper reports them.
TASKS: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
#: The ten colours GenEval's colour classifier chooses from.
COLORS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
)
#: The relations of GenEval's position clauses.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

#: Below this, a shrunk centre offset is no offset at all (the official tolerance).
_NO_OFFSET = 1e-3


class GenEvalSpecError(GdmdError):
    """A GenEval metadata entry or prompt cannot be turned into clauses."""

    exit_code = 2


@dataclass(frozen=True)
class Detection:
    """One detected object: its class, score, box ``(x0, y0, x1, y1)`` in pixels, and
    optionally its mask (``[H, W]`` bool, of the whole image) and classified colour."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: Any = field(default=None, compare=False, repr=False)
    color: str | None = None

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    @property
    def size(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return abs(x1 - x0), abs(y1 - y0)


@dataclass(frozen=True)
class IncludeClause:
    """At least ``count`` objects of ``label``; optionally all of colour ``color``, and
    all in ``position = (relation, j)`` to the objects include clause ``j`` matched."""

    label: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None

    def describe(self) -> str:
        text = f"{self.count} {self.color + ' ' if self.color else ''}{self.label}"
        if self.position:
            text += f" {self.position[0]} clause {self.position[1]}"
        return text

    def to_metadata(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"class": self.label, "count": self.count}
        if self.color is not None:
            entry["color"] = self.color
        if self.position is not None:
            entry["position"] = [self.position[0], self.position[1]]
        return entry


@dataclass(frozen=True)
class ExcludeClause:
    """Fewer than ``count`` objects of ``label``."""

    label: str
    count: int

    def describe(self) -> str:
        return f"fewer than {self.count} {self.label}"

    def to_metadata(self) -> dict[str, Any]:
        return {"class": self.label, "count": self.count}


@dataclass(frozen=True)
class PromptSpec:
    """A GenEval prompt as clauses: one line of ``evaluation_metadata.jsonl``."""

    tag: str
    prompt: str
    include: tuple[IncludeClause, ...]
    exclude: tuple[ExcludeClause, ...] = ()

    @classmethod
    def from_metadata(cls, entry: Mapping[str, Any], where: str = "metadata") -> PromptSpec:
        """Read and check one metadata object (``tag``, ``include``, ``exclude``, ``prompt``);
        a malformed entry raises :class:`GenEvalSpecError` naming ``where`` and the key."""
        if not isinstance(entry, Mapping):
            raise GenEvalSpecError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        tag = entry.get("tag")
        if tag not in TASKS:
            raise GenEvalSpecError(f"{where}: tag {tag!r} is not one of {', '.join(TASKS)}")
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise GenEvalSpecError(f"{where}: 'prompt' must be a non-empty string")
        raw_include = entry.get("include")
        if not isinstance(raw_include, list) or not raw_include:
            raise GenEvalSpecError(f"{where}: 'include' must be a non-empty list")
        raw_exclude = entry.get("exclude", [])
        if not isinstance(raw_exclude, list):
            raise GenEvalSpecError(f"{where}: 'exclude' must be a list")
        include = []
        for i, item in enumerate(raw_include):
            at = f"{where}: include[{i}]"
            label, count = _class_and_count(item, at)
            color = item.get("color")
            if color is not None and color not in COLORS:
                raise GenEvalSpecError(f"{at}: color {color!r} is not one of {', '.join(COLORS)}")
            position = item.get("position")
            if position is not None:
                if (
                    not isinstance(position, (list, tuple))
                    or len(position) != 2
                    or position[0] not in RELATIONS
                    or not isinstance(position[1], int)
                    or not 0 <= position[1] < i
                ):
                    raise GenEvalSpecError(
                        f"{at}: position must be [relation, j] with relation one of "
                        f"{', '.join(RELATIONS)} and j the index of an earlier include clause, "
                        f"got {position!r}"
                    )
                position = (position[0], position[1])
            include.append(IncludeClause(label, count, color, position))
        exclude = []
        for i, item in enumerate(raw_exclude):
            label, count = _class_and_count(item, f"{where}: exclude[{i}]")
            exclude.append(ExcludeClause(label, count))
        return cls(tag, prompt, tuple(include), tuple(exclude))

    def to_metadata(self) -> dict[str, Any]:
        """The metadata object, in GenEval's key order."""
        entry: dict[str, Any] = {"tag": self.tag}
        entry["include"] = [c.to_metadata() for c in self.include]
        if self.exclude:
            entry["exclude"] = [c.to_metadata() for c in self.exclude]
        entry["prompt"] = self.prompt
        return entry

    @property
    def clause_count(self) -> int:
        return len(self.include) + len(self.exclude)

    def labels(self) -> set[str]:
        """Every class the clauses name."""
        return {c.label for c in self.include} | {c.label for c in self.exclude}


def _class_and_count(item: Any, at: str) -> tuple[str, int]:
    if not isinstance(item, Mapping):
        raise GenEvalSpecError(f"{at}: expected an object with 'class' and 'count'")
    label, count = item.get("class"), item.get("count")
    if not isinstance(label, str) or not label:
        raise GenEvalSpecError(f"{at}: 'class' must be a non-empty string")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise GenEvalSpecError(f"{at}: 'count' must be a positive integer, got {count!r}")
    return label, count


@dataclass(frozen=True)
class ClauseResult:
    """Whether one clause held, and why not when it did not."""

    kind: str  # "include" or "exclude"
    index: int
    description: str
    satisfied: bool
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    """The judgement of one image: correct when every clause holds."""

    correct: bool
    clauses: tuple[ClauseResult, ...]
    #: The objects that counted, per class, most confident first.
    kept: Mapping[str, tuple[Detection, ...]] = field(default_factory=dict, compare=False)

    @property
    def fraction(self) -> float:
        """The fraction of clauses that hold (1.0 for a correct image)."""
        if not self.clauses:
            return 1.0
        return sum(c.satisfied for c in self.clauses) / len(self.clauses)

    @property
    def reason(self) -> str:
        """The failures, one a line, as GenEval's ``reason`` field."""
        return "\n".join(c.reason for c in self.clauses if not c.satisfied)


def relative_position(
    a: Detection, b: Detection, margin: float = 0.1
) -> set[str]:
    """The relations of box A to box B (GenEval's rule with its margin; see the module)."""
    (ax, ay), (bx, by) = a.center, b.center
    (aw, ah), (bw, bh) = a.size, b.size
    dx, dy = ax - bx, ay - by
    sx = math.copysign(max(abs(dx) - margin * (aw + bw), 0.0), dx)
    sy = math.copysign(max(abs(dy) - margin * (ah + bh), 0.0), dy)
    if abs(sx) < _NO_OFFSET and abs(sy) < _NO_OFFSET:
        return set()
    length = math.hypot(dx, dy)
    nx, ny = sx / length, sy / length
    relations = set()
    if nx < -0.5:
        relations.add("left of")
    if nx > 0.5:
        relations.add("right of")
    if ny < -0.5:
        relations.add("above")
    if ny > 0.5:
        relations.add("below")
    return relations


@dataclass(frozen=True)
class Rules:
    """GenEval's thresholds; the defaults are the official ones."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    position_margin: float = 0.1

    def score_threshold(self, tag: str) -> float:
        """The detection score a prompt of this task needs (strictly exceeded)."""
        return self.counting_threshold if tag == "counting" else self.threshold

    def select(self, detections: Iterable[Detection], tag: str) -> dict[str, list[Detection]]:
        """The detections that count, per class, most confident first (threshold, cap)."""
        threshold = self.score_threshold(tag)
        by_label: dict[str, list[Detection]] = {}
        for detection in detections:
            if detection.score > threshold:
                by_label.setdefault(detection.label, []).append(detection)
        # sorted() is stable: equal scores keep the detector's order.
        return {
            label: sorted(found, key=lambda d: -d.score)[: self.max_objects]
            for label, found in by_label.items()
        }

    def needs_color(
        self, spec: PromptSpec, kept: Mapping[str, Sequence[Detection]]
    ) -> list[Detection]:
        """The kept detections whose colour the clauses will read (so a classifier can be
        run on those only)."""
        wanted: dict[int, Detection] = {}  # by identity: equal detections are distinct objects
        for clause in spec.include:
            found = list(kept.get(clause.label, ()))[: clause.count]
            if clause.color is not None and len(found) >= clause.count:
                wanted.update((id(d), d) for d in found)
        return list(wanted.values())

    def judge(self, spec: PromptSpec, kept: Mapping[str, Sequence[Detection]]) -> Verdict:
        """Judge the clauses of ``spec`` on the kept detections (from :meth:`select`).

        Detections that a colour clause reads must carry their ``color``.
        """
        results: list[ClauseResult] = []
        matched: list[list[Detection] | None] = []
        for index, clause in enumerate(spec.include):
            found = list(kept.get(clause.label, ()))[: clause.count]
            reason = self._include_failure(clause, found, matched)
            matched.append(None if reason else found)
            results.append(
                ClauseResult("include", index, clause.describe(), not reason, reason)
            )
        for index, exclusion in enumerate(spec.exclude):
            present = len(kept.get(exclusion.label, ()))
            reason = ""
            if present >= exclusion.count:
                reason = f"expected {exclusion.label}<{exclusion.count}, found {present}"
            results.append(
                ClauseResult("exclude", index, exclusion.describe(), not reason, reason)
            )
        correct = all(r.satisfied for r in results)
        frozen = {label: tuple(found) for label, found in kept.items()}
        return Verdict(correct, tuple(results), frozen)

    def _include_failure(
        self,
        clause: IncludeClause,
        found: list[Detection],
        matched: list[list[Detection] | None],
    ) -> str:
        """Why the include clause fails, or ``""`` when it holds."""
        if len(found) < clause.count:
            return f"expected {clause.label}>={clause.count}, found {len(found)}"
        if clause.color is not None:
            colors = []
            for detection in found:
                if detection.color is None:
                    raise ValueError(
                        f"the colour of a kept {clause.label!r} detection is needed by a "
                        "colour clause but was not classified"
                    )
                colors.append(detection.color)
            hits = colors.count(clause.color)
            if hits < clause.count:
                seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                return (
                    f"expected {clause.color} {clause.label}>={clause.count}, found {hits} "
                    f"{clause.color}; and {seen}"
                )
        if clause.position is not None:
            relation, target = clause.position
            targets = matched[target]
            if targets is None:
                return f"no target for {clause.label} to be {relation}"
            for detection in found:
                for other in targets:
                    relations = relative_position(detection, other, self.position_margin)
                    if relation not in relations:
                        return (
                            f"expected {clause.label} {relation} target, found "
                            f"{' and '.join(sorted(relations)) or 'no relation to the'} target"
                        )
        return ""

    def evaluate(self, spec: PromptSpec, detections: Iterable[Detection]) -> Verdict:
        """:meth:`select` then :meth:`judge` (colours must already be on the detections)."""
        return self.judge(spec, self.select(detections, spec.tag))
