"""metrics.jsonl after a kill: lines past the resumed step, and a torn last line, are dropped."""

from __future__ import annotations

import json
from pathlib import Path

from gdmd.train.loop import _truncate_metrics


def test_lines_past_the_checkpoint_and_a_torn_line_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": s / 10}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "lo')  # killed in the middle of a write
    _truncate_metrics(path, 2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    _truncate_metrics(path, 0)  # a fresh start after a kill before the first checkpoint
    assert path.read_text() == ""
