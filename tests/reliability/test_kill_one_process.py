"""kill -9 of one process of ``gdmd run --num-processes 2``: the other stops at once, the
command names the killed process, and the resume is exact. Counted trials:
``benchmarks/reliability.py kill-one`` (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .kill_one import PROMPT_SECONDS, command, gloo_available, kill_one_trial, run

pytestmark = pytest.mark.skipif(not gloo_available(), reason="needs torch.distributed with gloo")


def test_killing_the_writing_process_stops_the_run_and_resumes_exactly(tmp_path: Path) -> None:
    done = run(command(tmp_path, "reference"))
    assert done.returncode == 0, done.stdout + done.stderr
    # Rank 0 is the one that writes checkpoints: the harder case of the two.
    problems, stopped_after = kill_one_trial(
        tmp_path, tmp_path / "reference", "killed", rank=0, after_steps=2
    )
    assert problems == []
    assert stopped_after < PROMPT_SECONDS
