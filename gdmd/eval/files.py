"""The files of a prompt-set evaluation (:mod:`gdmd.eval.suite`): JSON lines appended and
synced, whole files replaced atomically, PNG images written and read back."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``'s lines; a torn last line (an interrupted write) and
    lines that are not objects are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per row and sync, so an interruption loses at most a torn line."""
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (written beside it, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a ``(3, H, W)`` image in [0, 1] as a PNG, atomically."""
    from gdmd.images import to_pil

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    to_pil(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def load_png(path: Path) -> torch.Tensor:
    """A PNG as a float32 ``(3, H, W)`` tensor in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
