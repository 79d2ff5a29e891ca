"""The one owner of a run directory: where it lands, whether it may be written, resuming it,
and opening a finished run for sampling, evaluation and export.

A run directory holds ``resolved.toml`` (the recipe, every default filled in),
``plugins.lock`` (the plugin distributions used), ``metrics.jsonl``, ``samples/``,
``checkpoints/`` and, at the end, ``run.json`` and the exported ``student/``. It is
self-describing: ``resolved.toml`` rebuilds every part through the registry and the newest
whole checkpoint supplies the student's trained weights, so any model family opens the same
way, and a run trained with FSDP2 (which writes no ``student/``) too.

Safety (DESIGN.md §6): a run directory never lands outside the ``output_dir`` the recipe
names, and an existing run is never written into without ``--resume``.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gdmd.errors import CheckpointError, GdmdError
from gdmd.interfaces import DiffusionModel, PromptSource, WeightedReward
from gdmd.train.checkpoint import COMPLETE, complete_checkpoints, latest_checkpoint, load_checkpoint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class RunDirError(GdmdError):
    """A path given as a run directory is not one, or may not be used as asked."""

    exit_code = 2


#: Recipe keys a resume may change: they extend the run or change what is observed of it,
#: never what the steps already taken computed (warm-up and annealing count from step 0).
RESUMABLE_KEYS = frozenset(
    {
        "run.output_dir",
        "train.steps",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.sample_every",
        "train.num_sample_prompts",
        "log.every",
        "log.trackers",
    }
)


def _flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    """A run's TOML file, parsed; a damaged one is an error naming it (never a traceback)."""
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(
            f"{path}: cannot be read as TOML ({type(exc).__name__}: {exc}); it is not a "
            "resolved recipe gdmd wrote, so the run cannot be resumed"
        ) from None


def _with_defaults(resolved: Path, pm: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """The saved recipe as today's loader resolves it (defaults of newer keys filled in), or
    as written when today's loader refuses it (a key since removed is then a difference)."""
    from gdmd.errors import RecipeError
    from gdmd.recipe import load_recipe

    try:
        return tomllib.loads(load_recipe(resolved, pm).to_toml())
    except RecipeError:
        return raw


def recipe_differences(saved_toml: str, current_toml: str) -> list[str]:
    """Dotted keys whose values differ between two resolved recipes, sorted."""
    return _differing(_flatten(tomllib.loads(saved_toml)), _flatten(tomllib.loads(current_toml)))


def _differing(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))


def plugins_lock(pm: Any) -> str:
    """``distribution==version  # plugins`` per distribution, then plugins registered in code."""
    by_dist: dict[tuple[str, str], list[str]] = {}
    in_code: list[str] = []
    for plugin, dist, version in pm.plugin_versions():
        if dist is None:
            in_code.append(plugin)
        else:
            by_dist.setdefault((dist, version or "unknown"), []).append(plugin)
    lines = [f"{d}=={v}  # {', '.join(plugins)}" for (d, v), plugins in sorted(by_dist.items())]
    lines += [f"# registered in code (no distribution): {p}" for p in in_code]
    return "\n".join(lines) + "\n"


def _locked_versions(lock: str) -> dict[str, str]:
    versions = {}
    for line in lock.splitlines():
        pin = line.split("#", 1)[0].strip()
        if "==" in pin:
            dist, version = pin.split("==", 1)
            versions[dist] = version
    return versions


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class OpenedRun:
    """A finished run, rebuilt for sampling: recipe, teacher, trained student, rewards
    (empty when not asked for), prompt source, the student's times, and where it computes."""

    run_dir: Path
    recipe: Any
    teacher: DiffusionModel
    student: DiffusionModel
    rewards: list[WeightedReward]
    prompts: PromptSource
    student_timesteps: list[float]
    step: int
    info: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class RunDir:
    """A run directory: ``output_dir / name`` of a recipe, or one given by path."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- where a run lands ---------------------------------------------------------------

    @classmethod
    def for_recipe(cls, recipe: Any) -> RunDir:
        """``[run] output_dir / name``, refused when it would land outside ``output_dir``:
        a name that is a path (the recipe check refuses those too), or a run directory that
        is a symbolic link leading elsewhere."""
        name = str(recipe.run.name)
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise RunDirError(
                f"[run] name {name!r} must be a folder name, not a path: the run directory "
                "is output_dir/name"
            )
        output_dir = Path(recipe.run.output_dir)
        path = output_dir / name
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(output_dir.resolve()):
                raise RunDirError(
                    f"{path} is a symbolic link to {target}, outside the output_dir "
                    f"{output_dir}; refusing to write a run there"
                )
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """A run directory written by ``gdmd run``; :class:`RunDirError` otherwise."""
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"run directory {path} does not exist")
        if not (path / "resolved.toml").is_file():
            raise RunDirError(f"{path} is not a run directory: it has no resolved.toml")
        return cls(path)

    # -- what it holds -------------------------------------------------------------------

    @property
    def resolved_toml(self) -> Path:
        return self.path / "resolved.toml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def recipe(self, pm: Any) -> Any:
        """The run's recipe, loaded from its ``resolved.toml``."""
        from gdmd.recipe import load_recipe

        return load_recipe(self.resolved_toml, pm)

    def info(self) -> dict[str, Any]:
        """``run.json`` (written when a run finishes), ``{}`` when absent."""
        path = self.path / "run.json"
        if not path.is_file():
            return {}
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"cannot read {path}: {exc}") from exc
        return info if isinstance(info, dict) else {}

    def latest_checkpoint(self) -> Path | None:
        """The newest whole checkpoint, or ``None``."""
        return latest_checkpoint(self.checkpoints)

    def holds_a_run(self) -> bool:
        """Whether a run already wrote here (its recipe or a whole checkpoint)."""
        return self.resolved_toml.is_file() or bool(complete_checkpoints(self.checkpoints))

    # -- starting and resuming -----------------------------------------------------------

    def resolve_resume(self, resume: str | None) -> Path | None:
        """The checkpoint to continue from, or ``None`` for a fresh run.

        ``"auto"``: the newest whole checkpoint of this run, if any (a fresh start without
        one). A path: a checkpoint folder, or a run folder whose newest checkpoint is taken.
        Without ``resume``, a folder that already holds a run is refused, never overwritten.
        """
        if resume is None:
            if self.holds_a_run():
                what = "checkpoints" if self.latest_checkpoint() else "a run (resolved.toml)"
                raise CheckpointError(
                    f"{self.path} already holds {what}; pass --resume auto to continue it, or "
                    "set another [run] name or output_dir"
                )
            return None
        if resume == "auto":
            return self.latest_checkpoint()
        path = Path(resume)
        if (path / COMPLETE).is_file():
            return path
        found = latest_checkpoint(path / "checkpoints") if path.is_dir() else None
        if found is None:
            raise CheckpointError(f"--resume {resume}: no complete checkpoint found there")
        return found

    def check_resume(self, recipe: Any, checkpoint: Path, pm: Any = None) -> None:
        """Refuse to resume ``checkpoint`` with a recipe that differs from the one that wrote
        it (in anything but :data:`RESUMABLE_KEYS`), naming the keys that differ.

        With ``pm``, the saved recipe is read through today's recipe loader first, so a key
        that a newer gdmd added (with a default) does not count as a difference when the
        current recipe keeps that default: runs written before the key existed resume."""
        run_dir = checkpoint.parent.parent
        resolved = run_dir / "resolved.toml"
        if not resolved.is_file():
            raise CheckpointError(
                f"{run_dir} has no resolved.toml, so the recipe that wrote {checkpoint.name} "
                "is unknown; refusing to resume it"
            )
        raw = _read_toml(resolved)
        saved = _flatten(_with_defaults(resolved, pm, raw) if pm is not None else raw)
        current = _flatten(tomllib.loads(recipe.to_toml()))
        differing = [k for k in _differing(saved, current) if k not in RESUMABLE_KEYS]
        if not differing:
            return

        def show(table: dict[str, Any], key: str) -> str:
            return repr(table[key]) if key in table else "(absent)"

        lines = [f"{k}: run has {show(saved, k)}, now {show(current, k)}" for k in differing]
        raise CheckpointError(
            f"refusing to resume {run_dir}: the recipe differs from its resolved.toml in "
            f"{len(differing)} key(s) (only {', '.join(sorted(RESUMABLE_KEYS))} may change on "
            "resume):\n  " + "\n  ".join(lines)
        )

    def plugin_changes(self, pm: Any) -> list[str]:
        """Distributions whose version differs from the run's ``plugins.lock`` (a resume
        continues, but results may differ from an uninterrupted run)."""
        lock = self.path / "plugins.lock"
        if not lock.is_file():
            return []
        try:
            saved = _locked_versions(lock.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{lock}: cannot be read as text ({type(exc).__name__}); it is not a "
                "plugins.lock gdmd wrote"
            ) from None
        now = _locked_versions(plugins_lock(pm))
        return [
            f"{dist}: run used {saved[dist]}, now {now.get(dist, '(not installed)')}"
            for dist in sorted(saved)
            if saved[dist] != now.get(dist)
        ]

    def start(self, recipe: Any, pm: Any) -> None:
        """Create the folder and write ``resolved.toml`` and ``plugins.lock``."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.resolved_toml.write_text(recipe.to_toml())
        (self.path / "plugins.lock").write_text(plugins_lock(pm))

    def write_info(self, info: dict[str, Any]) -> None:
        """Write ``run.json``: what the finished run was (steps, student times, ...)."""
        (self.path / "run.json").write_text(json.dumps(info, indent=1))

    def save_student(self, student: Any) -> Path:
        """Save the trained student to ``student/`` (written beside, then renamed)."""
        final = self.path / "student"
        tmp = self.path / ".student-tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        student.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final

    # -- opening a finished run ----------------------------------------------------------

    def open(
        self,
        pm: Any,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        rewards: bool = True,
        checkpoint: Path | None = None,
    ) -> OpenedRun:
        """Rebuild the run for sampling: prompts, teacher, student (never the critic), and
        the rewards unless ``rewards=False``; load the student's trained weights (its EMA
        when the run kept one) from ``checkpoint``, default the newest whole one.

        Everything is built on ``device`` (default: CUDA when there is a GPU, else the CPU),
        so a family whose frozen parts live outside its module (SD3's text encoders and VAE)
        is on the device too. ``dtype`` (default: the run's mixed precision, float32 without)
        is what factories are asked to build in and what :mod:`gdmd.eval` samples under.
        """
        from gdmd.run.build import SAMPLING_ROLES, build_components, run_dtype, student_timesteps

        if not (self.resolved_toml.is_file()):
            raise RunDirError(f"{self.path} is not a run directory: it has no resolved.toml")
        checkpoint = checkpoint or self.latest_checkpoint()
        if checkpoint is None:
            raise CheckpointError(
                f"{self.path} has no complete checkpoint to load the student from"
            )
        recipe = self.recipe(pm)
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or run_dtype(recipe)
        roles = SAMPLING_ROLES | ({"rewards"} if rewards else set())
        parts = build_components(recipe, None, device=device, dtype=dtype, roles=roles)
        tensors, states = load_checkpoint(checkpoint)
        weights = tensors.get("ema", tensors["student"])
        student: torch.nn.Module = parts.student  # type: ignore[assignment]
        missing = set(weights) - set(student.state_dict())
        if missing:
            raise CheckpointError(
                f"{checkpoint}: {len(missing)} student tensors do not fit the model the recipe "
                f"builds (e.g. {sorted(missing)[:3]})"
            )
        student.load_state_dict(weights, strict=False)
        student.eval()
        for model in (parts.teacher, parts.student):
            model.to(device)  # type: ignore[attr-defined]
        info = self.info()
        timesteps = info.get("student_timesteps") or student_timesteps(
            recipe, parts.teacher.schedule
        )
        return OpenedRun(
            run_dir=self.path,
            recipe=recipe,
            teacher=parts.teacher,
            student=parts.student,
            rewards=parts.rewards or [],
            prompts=parts.prompts,
            student_timesteps=[float(t) for t in timesteps],
            step=int(states["counters"]["step"]),
            info=info,
            dtype=dtype,
            device=device,
        )
