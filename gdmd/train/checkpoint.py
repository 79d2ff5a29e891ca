"""Atomic, pickle-free checkpoints of everything a run needs to resume exactly.

A checkpoint is a folder ``step-NNNNNNN`` under ``<run>/checkpoints``. It is written into a
temporary sibling folder, every file is flushed and fsynced, a ``COMPLETE`` marker is written
last, and the folder is renamed into place; a folder without the marker is never loaded, and
older checkpoints are deleted only after the new one is whole. (The same discipline as
torchtitan's step folders and Lightning's atomic save.)

Tensors go to safetensors files; everything else (optimizer hyper-parameters, scheduler
state, counters) to JSON. Optimizer states are flattened into tensors plus a JSON skeleton,
so nothing is ever unpickled. The marker lists every file with its SHA-256, so a file that
was truncated, corrupted or removed after the save is reported by name instead of loaded.
A save that fails (a full disk) removes its temporary folder and raises
:class:`CheckpointWriteError` naming the checkpoint; the checkpoints before it are untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gdmd.errors import CheckpointError

COMPLETE = "COMPLETE"


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, quota, file-size limit); the run stops
    and the checkpoints written before it are untouched."""

    exit_code = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def flatten_state(state: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Replace every tensor in a nested dict/list structure by ``{"__tensor__": key}``.

    The tensors land in ``tensors`` (contiguous CPU copies); the returned skeleton is
    JSON-serialisable as long as the non-tensor leaves are.
    """
    if isinstance(state, torch.Tensor):
        key = prefix or "value"
        tensors[key] = state.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(state, Mapping):
        out = {}
        for k, v in state.items():
            out[str(k)] = flatten_state(v, tensors, f"{prefix}.{k}" if prefix else str(k))
        # JSON keys are strings; remember which were ints (optimizer state is keyed by index).
        int_keys = [str(k) for k in state if isinstance(k, int)]
        if int_keys:
            out["__int_keys__"] = int_keys
        return out
    if isinstance(state, (list, tuple)):
        items = [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(state)]
        return {"__tuple__": items} if isinstance(state, tuple) else items
    return state


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        int_keys = set(skeleton.get("__int_keys__", []))
        return {
            (int(k) if k in int_keys else k): unflatten_state(v, tensors)
            for k, v in skeleton.items()
            if k != "__int_keys__"
        }
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_dirname(step: int) -> str:
    return f"step-{step:07d}"


def complete_checkpoints(checkpoint_root: Path) -> list[tuple[int, Path]]:
    """Whole checkpoints under ``checkpoint_root``, oldest first (incomplete ones ignored)."""
    if not checkpoint_root.is_dir():
        return []
    found = []
    for child in checkpoint_root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / COMPLETE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(checkpoint_root: Path) -> Path | None:
    found = complete_checkpoints(checkpoint_root)
    return found[-1][1] if found else None


def save_checkpoint(
    checkpoint_root: Path,
    step: int,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    states: Mapping[str, Any],
    keep: int,
) -> Path:
    """Write one checkpoint atomically, then prune to the newest ``keep`` whole checkpoints.

    ``tensors``: file stem -> flat tensor dict (each saved as ``<stem>.safetensors``);
    ``states``: file stem -> nested state with tensors (flattened: ``<stem>.safetensors`` +
    ``<stem>.json``), or plain JSON data (``<stem>.json`` only).
    """
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_root / step_dirname(step)
    tmp = checkpoint_root / f".tmp-{step_dirname(step)}-{os.getpid()}"
    try:
        _write(tmp, final, step, tensors, states)
    except (OSError, SafetensorError) as exc:
        # A full disk, a quota, a file-size limit: the half-written folder goes, the
        # checkpoints before it stay whole, and the run stops saying where it stands.
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(checkpoint_root)
        kept = f"{previous} is intact" if previous else "no earlier checkpoint exists"
        reason = getattr(exc, "strerror", None) or exc
        raise CheckpointWriteError(
            f"cannot write checkpoint {final}: {reason}; the run stopped at step {step} and "
            f"{kept}. Free space, then continue with --resume auto"
        ) from exc
    _fsync_dir(checkpoint_root)
    for _, old in complete_checkpoints(checkpoint_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_root.glob(".tmp-*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _write(
    tmp: Path,
    final: Path,
    step: int,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    states: Mapping[str, Any],
) -> None:
    """Write every file into ``tmp``, the marker last, and rename ``tmp`` to ``final``."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    written: list[Path] = []
    for stem, flat in tensors.items():
        path = tmp / f"{stem}.safetensors"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in flat.items()}, str(path))
        written.append(path)
    for stem, state in states.items():
        state_tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten_state(state, state_tensors)
        if state_tensors:
            path = tmp / f"{stem}.safetensors"
            save_file(state_tensors, str(path))
            written.append(path)
        path = tmp / f"{stem}.json"
        path.write_text(json.dumps(skeleton, indent=1, sort_keys=True))
        written.append(path)
    for path in written:
        _fsync_file(path)
    marker = tmp / COMPLETE
    files = {path.name: _sha256(path) for path in written}
    marker.write_text(json.dumps({"step": step, "files": files}, indent=1, sort_keys=True))
    _fsync_file(marker)
    _fsync_dir(tmp)
    if final.exists():
        # A leftover from a run that died after renaming but before pruning: replace it.
        shutil.rmtree(final)
    os.replace(tmp, final)


def verify_checkpoint(path: Path) -> None:
    """Check that every file the marker lists is there, whole and unchanged."""
    marker = path / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    try:
        files = json.loads(marker.read_text()).get("files")
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"{marker} is unreadable ({exc}); the checkpoint is damaged") from exc
    if files is None:  # written before the marker listed its files
        return
    for name, expected in sorted(files.items()):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path} is damaged: {name} is missing")
        if _sha256(file) != expected:
            raise CheckpointError(
                f"{path} is damaged: {name} does not match the checksum written with it "
                "(truncated or corrupted after the save)"
            )
    extra = sorted(p.name for p in path.iterdir() if p.name != COMPLETE and p.name not in files)
    if extra:
        raise CheckpointError(f"{path} holds files its save did not write: {', '.join(extra)}")


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, after :func:`verify_checkpoint`.

    Returns ``(tensors, states)``: flat tensor files without a JSON sibling are in
    ``tensors``; the rest are rebuilt nested states in ``states``. Any damage is a
    :class:`CheckpointError` naming the file.
    """
    verify_checkpoint(path)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    states: dict[str, Any] = {}
    current = path
    try:
        for file in sorted(path.glob("*.json")):
            current = file
            stem = file.stem
            data = json.loads(file.read_text())
            st = path / f"{stem}.safetensors"
            current = st
            flat = load_file(str(st)) if st.exists() else {}
            states[stem] = unflatten_state(data, flat)
        for file in sorted(path.glob("*.safetensors")):
            if not (path / f"{file.stem}.json").exists():
                current = file
                tensors[file.stem] = load_file(str(file))
    except Exception as exc:
        raise CheckpointError(
            f"{path} is damaged: cannot read {current.name} ({type(exc).__name__}: {exc})"
        ) from exc
    return tensors, states
