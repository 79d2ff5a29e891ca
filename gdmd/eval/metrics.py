"""Metrics of an evaluation: registered rewards, configured as recipe reward tables are.

Any reward that ``gdmd list-plugins`` shows can score an evaluation. An *eval file* (TOML)
names them, one ``[metric.<label>]`` table each, with ``kind`` (default: the label) and the
reward's own keys, validated through the same registry and config models as a recipe's
``[reward.<label>]`` tables; an optional ``[frechet]`` table picks the CLIP model of the
Fréchet distance::

    [metric.clip]
    kind = "clip"
    model = "openai/clip-vit-large-patch14"

    [frechet]
    clip_model = "openai/clip-vit-large-patch14"

Every problem of the file is reported at once, naming the file, the table and the key.
Without an eval file, the run's recipe rewards are the metrics. Importing this module imports
no torch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from gdmd.config import ComponentConfig
from gdmd.errors import GdmdError, UnknownComponentError
from gdmd.recipe.problems import Problems, show
from gdmd.recipe.tables import Table
from gdmd.registry import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from gdmd.registry import ComponentSpec

__all__ = [
    "EvalFileError",
    "EvalSettings",
    "FrechetTable",
    "MetricSpec",
    "load_eval_file",
    "metrics_from_recipe",
]

#: The tables an eval file may have.
EVAL_TABLES = ("metric", "frechet")
#: Reward kinds whose ``model`` key is a CLIP model the Fréchet distance can use by default.
CLIP_KINDS = ("clip", "aesthetic")


class EvalFileError(GdmdError):
    """An eval file is missing, not TOML, or has invalid tables; lists every problem."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        header = (
            "1 problem in the eval file:"
            if count == 1
            else f"{count} problems in the eval file:"
        )
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))


class MetricHead(Table):
    """``[metric.<label>]``: the keys the table keeps for itself (the rest go to the reward)."""

    kind: str | None = Field(
        None, min_length=1, description="A registered reward (default: the table's label)."
    )


class FrechetTable(Table):
    """``[frechet]``: the CLIP-space Fréchet distance between each student and the teacher."""

    clip_model: str | None = Field(
        None,
        min_length=1,
        description="Hub id or local directory of the CLIPModel whose image embeddings are "
        "compared (default: the model of a clip or aesthetic metric; none: no distance).",
    )
    revision: str | None = Field(None, description="Hub revision of clip_model.")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its label (the column), the reward's registered kind and validated config."""

    label: str
    kind: str
    config: ComponentConfig
    component: ComponentSpec

    def build(self, ctx: Any) -> Any:
        """The reward model: ``component.factory(config, ctx)``."""
        return self.component.build(self.config, ctx)

    def describe(self) -> dict[str, Any]:
        """``{"kind", "plugin", "config"}``, JSON-serialisable."""
        return {
            "kind": self.kind,
            "plugin": self.component.plugin,
            "config": self.config.model_dump(mode="json"),
        }

    @property
    def fingerprint(self) -> str:
        """A short hash of the kind and config: a cached score is reused only under the same
        fingerprint, so changing a metric's settings rescores its images."""
        text = json.dumps({"kind": self.kind, "config": self.describe()["config"]}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def clip_model(self) -> tuple[str, str | None] | None:
        """``(model, revision)`` when this metric reads a CLIP model the Fréchet distance can
        use (``clip``, ``aesthetic``), else ``None``."""
        if self.kind not in CLIP_KINDS:
            return None
        model = getattr(self.config, "model", None)
        return (str(model), getattr(self.config, "revision", None)) if model else None


@dataclass(frozen=True)
class EvalSettings:
    """A validated eval file: its metrics (file order) and the Fréchet settings."""

    source: Path | None
    metrics: dict[str, MetricSpec]
    frechet: FrechetTable


def metrics_from_recipe(recipe: Any, registries: Any) -> dict[str, MetricSpec]:
    """A run's ``[eval.metrics.<label>]`` tables (validated as an eval file's
    ``[metric.<label>]`` tables), or without them its ``[reward.<label>]`` tables as metrics
    (weights and normalisation dropped)."""
    if recipe.eval.metrics:
        source = f"{recipe.source or 'recipe'} [eval]"
        return parse_eval_tables({"metric": recipe.eval.metrics}, source, registries).metrics
    return {
        label: MetricSpec(label, spec.kind, spec.config, spec.component)
        for label, spec in recipe.rewards.items()
    }


def _resolve(registries: Any, name: str) -> ComponentSpec:
    require = getattr(registries, "require_component", None)
    if require is not None:
        spec: ComponentSpec = require("reward", name)
        return spec
    found: ComponentSpec = registries.get("reward", name)
    return found


def _metric(
    label: str, values: Mapping[str, Any], registries: Any, problems: Problems
) -> MetricSpec | None:
    table = ("metric", label)
    head_keys = set(MetricHead.model_fields)
    head_values = {k: v for k, v in values.items() if k in head_keys}
    rest = {k: v for k, v in values.items() if k not in head_keys}
    try:
        head = MetricHead.model_validate(head_values)
    except ValidationError as exc:
        problems.add_validation_error(table, exc, MetricHead, head_values)
        return None
    name = head.kind or label
    try:
        spec = _resolve(registries, name)
    except UnknownComponentError as exc:
        note = "" if head.kind else f' (with no kind set, the kind is the label "{label}")'
        problems.add(table, ("kind",), str(exc) + note)
        return None
    try:
        config = spec.validate_config(rest)
    except ValidationError as exc:
        problems.add_validation_error(table, exc, spec.config, rest, extra_keys=head_keys)
        return None
    except Exception as exc:  # a plugin's validator with a bug
        problems.add(
            table,
            (),
            f'the config of reward "{spec.name}" (plugin "{spec.plugin}") failed to validate: '
            f"{type(exc).__name__}: {exc}",
        )
        return None
    return MetricSpec(label, spec.name, config, spec)


def parse_eval_tables(
    data: Mapping[str, Any], source: str | Path, registries: Any
) -> EvalSettings:
    """Validate an eval file's parsed TOML; :class:`EvalFileError` lists every problem."""
    problems = Problems(str(source))
    for name in data:
        if name not in EVAL_TABLES:
            suggestion = did_you_mean(name, EVAL_TABLES)
            hint = (
                f' (did you mean "[{suggestion}]"?)'
                if suggestion
                else f" (known tables: {', '.join(EVAL_TABLES)})"
            )
            problems.add((name,), (), f"unknown table{hint}")
    metrics: dict[str, MetricSpec] = {}
    tables = data.get("metric", {})
    if not isinstance(tables, dict):
        problems.add(("metric",), (), f"expected tables [metric.<label>], got {show(tables)}")
        tables = {}
    if not tables:
        problems.add(("metric",), (), "no metrics: add at least one [metric.<label>] table")
    for label, values in tables.items():
        if not isinstance(values, dict):
            problems.add(
                ("metric",),
                (label,),
                f"expected a table [metric.{label}] of reward settings, got {show(values)}",
            )
            continue
        metric = _metric(label, values, registries, problems)
        if metric is not None:
            metrics[label] = metric
    frechet_values = data.get("frechet", {})
    frechet = FrechetTable.model_validate({})
    if not isinstance(frechet_values, dict):
        problems.add(("frechet",), (), f"expected a table, got {show(frechet_values)}")
    else:
        try:
            frechet = FrechetTable.model_validate(frechet_values)
        except ValidationError as exc:
            problems.add_validation_error(("frechet",), exc, FrechetTable, frechet_values)
    if problems:
        raise EvalFileError(problems.lines())
    return EvalSettings(Path(source), metrics, frechet)


def load_eval_file(path: str | Path, registries: Any) -> EvalSettings:
    """Read and validate the eval file at ``path`` (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise EvalFileError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise EvalFileError([f"{path}: is a directory, not an eval file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFileError([f"{path}: cannot read the file: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EvalFileError([f"{path}: invalid TOML: {exc}"]) from None
    return parse_eval_tables(data, path, registries)

