"""One process of a two-process run killed, and the check that the other stops promptly, the
command says what happened, and the resume is exact.

Shared by ``tests/reliability/test_kill_one_process.py`` and ``benchmarks/reliability.py
kill-one`` (the counted figure in ``docs/reliability.md``). The run is ``gdmd run
recipes/tiny_cpu.toml --num-processes 2`` (DDP over gloo on the CPU) made smaller, a
checkpoint after every step, in a subprocess. Once ``after_steps`` steps are logged, one
worker (rank 0, the writer, or rank 1) gets SIGKILL. A trial holds when:

1. the launcher exits within :data:`PROMPT_SECONDS` of the kill (not after a collective's
   30-minute timeout), with 137 and an ``error:`` naming the killed process;
2. no process of the run is left alive;
3. ``--resume auto --num-processes 2`` continues from the newest complete checkpoint and ends
   bit for bit equal to an uninterrupted two-process run, ``metrics.jsonl`` included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .full_disk import bitwise_equal, metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny_cpu.toml"
STEPS = 4
#: How long the survivor and the launcher may take to stop after the kill.
PROMPT_SECONDS = 60.0
TIMEOUT = 600


def gloo_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


def command(out: Path, name: str, *args: str) -> list[str]:
    sets = [
        "train.batch_size=2",
        "target.k=2",
        "train.critic_steps=1",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=2",
        'log.trackers=["jsonl"]',
        f"train.steps={STEPS}",
        f"run.output_dir={out}",
        f"run.name={name}",
    ]
    cmd = [sys.executable, "-m", "gdmd", "run", str(RECIPE), "--num-processes", "2"]
    return [*cmd, *(f"--set={s}" for s in sets), *args]


def env() -> dict[str, str]:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
    environ.pop("WORLD_SIZE", None)
    return environ


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT, start_new_session=True
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _rank(pid: int) -> int | None:
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _workers(launcher: int) -> dict[int, int]:
    """``rank -> pid`` of the launcher's worker processes."""
    ranks = {}
    for pid in _children(launcher):
        rank = _rank(pid)
        if rank is not None:
            ranks[rank] = pid
    return ranks


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie awaiting its parent)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _final(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / f"step-{STEPS:07d}"


def _logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def kill_one_trial(
    out: Path, reference: Path, name: str, rank: int, after_steps: int
) -> tuple[list[str], float]:
    """One trial; returns what did not hold (empty: all held) and seconds from kill to exit."""
    from gdmd.train.checkpoint import complete_checkpoints

    problems: list[str] = []
    run_dir = out / name
    launcher = subprocess.Popen(
        command(out, name),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while _logged(run_dir) < after_steps and launcher.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{after_steps} steps not logged in {TIMEOUT} s")
            time.sleep(0.02)
        workers = _workers(launcher.pid)
        if launcher.poll() is not None or rank not in workers:
            output = launcher.communicate()[0]
            return [f"the run ended or had no rank {rank} before the kill: {output[-400:]}"], 0.0
        os.kill(workers[rank], signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            output = launcher.communicate(timeout=PROMPT_SECONDS)[0]
        except subprocess.TimeoutExpired:
            problems.append(f"the run was still alive {PROMPT_SECONDS:.0f} s after the kill")
            os.killpg(launcher.pid, signal.SIGKILL)
            output = launcher.communicate()[0]
        stopped_after = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    text = " ".join(output.split())
    expected = f"error: process {rank} of 2 (pid {workers[rank]}) was killed by SIGKILL"
    if launcher.returncode != 137 or expected not in text:
        problems.append(f"exit {launcher.returncode}, no message naming the kill: {text[-400:]}")
    alive = [pid for pid in workers.values() if _running(pid)]
    if alive:
        problems.append(f"processes left alive: {alive}")
    found = complete_checkpoints(run_dir / "checkpoints")
    resumed = run(command(out, name, "--resume", "auto"))
    resumed_text = " ".join(resumed.stdout.split())
    if resumed.returncode != 0:
        problems.append(f"the resume exited {resumed.returncode}: {resumed.stderr[-400:]}")
    elif found and f"resuming from {found[-1][1]}" not in resumed_text:
        problems.append(f"the resume did not start from {found[-1][1]}: {resumed_text[-300:]}")
    elif not bitwise_equal(_final(reference), _final(run_dir)):
        problems.append("the resumed run's final state differs from the uninterrupted run's")
    elif metrics(reference) != metrics(run_dir):
        problems.append("metrics.jsonl differs from the uninterrupted run's")
    return problems, stopped_after
