"""``gdmd export``: a run's student written by its own model family, for tools outside gdmd.

The run is opened through :class:`gdmd.run.rundir.RunDir` (so the student's trained weights
come from the newest whole checkpoint, also for FSDP2 runs, which write no ``student/``
folder); the student must implement :class:`gdmd.interfaces.Exportable`, and writes itself
through ``student.export(directory, format, info)``. This module knows no model family.

The export is written to a temporary sibling folder and renamed into place, so a failed export
leaves no ``OUT``. This module imports no torch; the command's work is imported when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdmd.errors import GdmdError

if TYPE_CHECKING:
    from gdmd.interfaces import ExportInfo
    from gdmd.run.rundir import OpenedRun

__all__ = ["ExportError", "ExportedRun", "export_info", "export_run"]


class ExportError(GdmdError):
    """A run cannot be exported as asked (``OUT`` exists, a student that cannot export, an
    unknown format...)."""

    exit_code = 2


@dataclass
class ExportedRun:
    """What was written, for the command's message and for tests."""

    out: Path
    format: str
    files: list[Path]
    student_kind: str
    timesteps: list[float]


def export_info(run: OpenedRun) -> ExportInfo:
    """What the student's family is told about the run it exports."""
    from gdmd.interfaces import ExportInfo

    recipe = run.recipe
    return ExportInfo(
        run_dir=Path(run.run_dir),
        run_name=recipe.run.name,
        student_timesteps=[float(t) for t in run.student_timesteps],
        step=run.step,
        target=recipe.target.kind,
        settings=recipe.student.config,
        teacher_settings=recipe.teacher.config,
        dtype=run.dtype,
        target_options=recipe.target.config.model_dump(mode="json"),
        rewards={
            label: {"kind": spec.kind, "weight": spec.weight, "normalise": spec.normalise}
            for label, spec in recipe.rewards.items()
        },
        teacher_guidance_scale=recipe.teacher.guidance_scale,
        recipe_text=recipe.to_toml(),
    )


def _check_exportable(student: Any, kind: str, format: str) -> tuple[str, ...]:
    from gdmd.interfaces import Exportable

    if not isinstance(student, Exportable):
        raise ExportError(
            f"the student is a {kind!r} model, which cannot export: its model family does not "
            "implement gdmd.interfaces.Exportable (export_formats and export())"
        )
    formats = tuple(student.export_formats)
    if format not in formats:
        raise ExportError(
            f"a {kind!r} student exports as {', '.join(formats)}; there is no format {format!r}"
        )
    return formats


def export_run(run_dir: str | Path, out: str | Path, format: str, pm: Any) -> ExportedRun:
    """Export the student of ``run_dir`` to ``out`` (which must not exist) in ``format``."""
    import shutil

    import torch

    from gdmd.run.rundir import RunDir

    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists; choose a new folder or remove it first")
    # On the CPU: an export needs no speed, and a GPU may be busy training.
    run = RunDir.existing(run_dir).open(pm, rewards=False, device=torch.device("cpu"))
    kind = run.recipe.student.kind
    _check_exportable(run.student, kind, format)
    info = export_info(run)

    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        files = run.student.export(tmp, format, info)  # type: ignore[attr-defined]
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = [out / Path(f).relative_to(tmp) for f in files]
    return ExportedRun(out, format, files, kind, info.student_timesteps)
