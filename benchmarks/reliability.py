"""Reliability trials of ``gdmd run`` on a tiny CPU run: kill -9, SIGTERM/SIGINT, damaged
checkpoints, changed recipes. Prints one "trials run / held" line per property.

    nice python benchmarks/reliability.py [--kill-trials 24] [--signal-trials 10]
                                          [--ddp-signal-trials 2] [--seed 0] [--out DIR]

Every trial runs the real command line in a subprocess (``python -m gdmd run``) on
``recipes/tiny_cpu.toml`` made smaller, a checkpoint after every step:

* **kill -9** (``--kill-trials``): SIGKILL to the run's process group at a random moment of
  training; every other trial instead waits until a checkpoint is being written (its
  temporary folder exists) and kills it there. Held when: every complete checkpoint left
  loads; ``--resume auto`` continues from the newest of them (or starts afresh when there is
  none); the final student, critic, optimizers, schedules and counters equal an
  uninterrupted run's bit for bit; and ``metrics.jsonl`` equals the uninterrupted run's.
* **SIGTERM / SIGINT** (``--signal-trials``, alternating): the signal at a random moment of
  training. Held when: the exit code is 143 / 130, the newest checkpoint is at the last
  logged step, and the resumed run ends bit for bit equal to the uninterrupted one.
  ``--ddp-signal-trials`` does the same with SIGTERM to ``gdmd run --num-processes 2``.
* **damaged checkpoint**: each file of a checkpoint truncated, corrupted (one byte) and
  deleted, and a stray file added. Held when ``--resume auto`` exits 2 naming the file, with
  no traceback. A removed ``COMPLETE`` marker must make the resume fall back to the previous
  checkpoint.
* **changed recipe**: resuming with a changed value of several keys. Held when the resume
  exits 2 naming the key; a longer ``train.steps`` must resume.

Subcommands count the other failure modes; the checks live in ``tests/reliability/``, whose
CI-sized tests run one sample of each:

    python benchmarks/reliability.py fuzz --examples 2000     # fuzzed recipes, gdmd validate
    python benchmarks/reliability.py plugins --trials 3       # faulty third-party plugins
    python benchmarks/reliability.py full-disk --trials 8     # a full disk during a save
    python benchmarks/reliability.py kill-one --trials 6      # kill -9 of 1 of 2 processes
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny_cpu.toml"
STEPS = 6
COMMON = [
    "train.batch_size=2",
    "target.k=2",
    "train.critic_steps=2",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=2",
    'log.trackers=["jsonl"]',
]


class Trials:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int, list[str]]] = []

    def record(self, name: str, held: list[bool], notes: list[str]) -> None:
        self.rows.append((name, len(held), sum(held), notes))
        print(f"{name}: {sum(held)}/{len(held)} held", flush=True)

    def report(self) -> bool:
        print("\n| property | trials run | held |\n|---|---|---|")
        for name, run, held, _ in self.rows:
            print(f"| {name} | {run} | {held} |")
        failures = [(name, notes) for name, run, held, notes in self.rows if held < run]
        for name, notes in failures:
            print(f"\nFAILED {name}:")
            for note in notes:
                print(f"  {note}")
        return not failures


def gdmd_cmd(out: Path, name: str, *args: str, steps: int = STEPS) -> list[str]:
    sets = [*COMMON, f"run.output_dir={out}", f"run.name={name}", f"train.steps={steps}"]
    return [sys.executable, "-m", "gdmd", "run", str(RECIPE), *(f"--set={s}" for s in sets), *args]


def env() -> dict[str, str]:
    # COLUMNS: rich folds long paths at the terminal width; the checks read them whole.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=900)


def start(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_logged(run_dir: Path, steps: int, proc: subprocess.Popen[str]) -> bool:
    """Wait until ``steps`` steps are logged (True) or the process exited (False)."""
    while logged_steps(run_dir) < steps:
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return True


def wait_saving(run_dir: Path, proc: subprocess.Popen[str]) -> bool:
    """Wait until a checkpoint is being written (True) or the process exited (False)."""
    while not any((run_dir / "checkpoints").glob(".tmp-*")):
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    return True


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def state_of(checkpoint: Path) -> dict[str, object]:
    from gdmd.train.checkpoint import load_checkpoint

    tensors, states = load_checkpoint(checkpoint)

    def flat(tree: object, prefix: str) -> dict[str, object]:
        if isinstance(tree, dict):
            return {
                k: v for key, val in tree.items() for k, v in flat(val, f"{prefix}.{key}").items()
            }
        if isinstance(tree, (list, tuple)):
            return {
                k: v for i, val in enumerate(tree) for k, v in flat(val, f"{prefix}[{i}]").items()
            }
        return {prefix: tree}

    return flat({"tensors": tensors, "states": states}, "")


def bitwise_equal(a: Path, b: Path) -> bool:
    import torch

    left, right = state_of(a), state_of(b)
    if left.keys() != right.keys():
        return False
    for key, value in left.items():
        other = right[key]
        if isinstance(value, torch.Tensor):
            if not (isinstance(other, torch.Tensor) and torch.equal(value, other)):
                return False
        elif value != other:
            return False
    return True


def metrics_without_time(run_dir: Path) -> list[str]:
    import json

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [json.dumps({k: v for k, v in m.items() if k != "step_time"}) for m in lines]


def final(run_dir: Path, steps: int = STEPS) -> Path:
    return run_dir / "checkpoints" / f"step-{steps:07d}"


def kill_trials(out: Path, reference: Path, count: int, rng: random.Random, t: Trials) -> None:
    from gdmd.errors import CheckpointError
    from gdmd.train.checkpoint import complete_checkpoints, load_checkpoint

    held: list[bool] = []
    notes: list[str] = []
    in_save = 0
    for i in range(count):
        name = f"kill-{i}"
        run_dir = out / name
        proc = start(gdmd_cmd(out, name))
        during_save = i % 2 == 1
        if during_save:
            # Kill inside the save that follows a random number of steps.
            wait_logged(run_dir, rng.randint(0, STEPS - 2), proc)
            alive = wait_saving(run_dir, proc)
        else:
            alive = wait_logged(run_dir, 1, proc)
            time.sleep(rng.uniform(0.0, 1.5))
            alive = alive and proc.poll() is None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        landed_in_save = any((run_dir / "checkpoints").glob(".tmp-*"))
        in_save += landed_in_save
        found = complete_checkpoints(run_dir / "checkpoints")
        ok = True
        for _, path in found:
            try:
                load_checkpoint(path)
            except CheckpointError as exc:
                ok = False
                notes.append(f"{name}: a complete checkpoint does not load: {exc}")
        newest = found[-1][1] if found else None
        resumed = run(gdmd_cmd(out, name, "--resume", "auto"))
        text = " ".join(resumed.stdout.split())
        if resumed.returncode != 0:
            ok = False
            notes.append(f"{name}: resume exited {resumed.returncode}: {resumed.stderr[-400:]}")
        elif newest is not None and f"resuming from {newest}" not in text:
            ok = False
            notes.append(f"{name}: did not resume from {newest}: {text[:300]}")
        elif newest is None and "starting a fresh run" not in text:
            ok = False
            notes.append(f"{name}: no checkpoint, yet no fresh start: {text[:300]}")
        elif not bitwise_equal(final(reference), final(run_dir)):
            ok = False
            notes.append(f"{name}: final state differs from the uninterrupted run")
        elif metrics_without_time(reference) != metrics_without_time(run_dir):
            ok = False
            notes.append(f"{name}: metrics.jsonl differs from the uninterrupted run")
        held.append(ok)
        where = "in a save" if landed_in_save else "between saves"
        step = found[-1][0] if found else 0
        print(
            f"  {name}: killed {where} (alive={alive}), newest checkpoint {step}, ok={ok}",
            flush=True,
        )
        shutil.rmtree(run_dir)
    notes.append(f"{in_save} of {count} kills landed while a checkpoint was being written")
    t.record(f"kill -9 at a random moment ({in_save} of them inside a save)", held, notes)


def signal_trials(
    out: Path, reference: Path, count: int, rng: random.Random, t: Trials, processes: int = 1
) -> None:
    from gdmd.train.checkpoint import complete_checkpoints

    held: list[bool] = []
    notes: list[str] = []
    extra = ["--num-processes", str(processes)] if processes > 1 else []
    for i in range(count):
        sig = signal.SIGTERM if (i % 2 == 0 or processes > 1) else signal.SIGINT
        expected = 143 if sig == signal.SIGTERM else 130
        name = f"signal-{processes}-{i}"
        run_dir = out / name
        proc = start(gdmd_cmd(out, name, *extra))
        wait_logged(run_dir, 1, proc)
        time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is not None:
            notes.append(f"{name}: finished before the signal; not counted")
            shutil.rmtree(run_dir)
            continue
        # The launcher (or the single process) gets the signal, as from a scheduler.
        os.kill(proc.pid, sig)
        output, _ = proc.communicate(timeout=900)
        found = complete_checkpoints(run_dir / "checkpoints")
        ok = proc.returncode == expected
        if not ok:
            notes.append(
                f"{name}: {sig.name} exited {proc.returncode}, not {expected}: {output[-300:]}"
            )
        if ok and (not found or found[-1][0] != logged_steps(run_dir)):
            ok = False
            notes.append(f"{name}: newest checkpoint is not at the last logged step")
        if ok:
            resumed = run(gdmd_cmd(out, name, "--resume", "auto", *extra))
            if resumed.returncode != 0:
                ok = False
                notes.append(f"{name}: resume exited {resumed.returncode}: {resumed.stderr[-300:]}")
            elif not bitwise_equal(final(reference), final(run_dir)):
                ok = False
                notes.append(f"{name}: final state differs from the uninterrupted run")
        held.append(ok)
        step = found[-1][0] if found else 0
        print(f"  {name}: {sig.name} at step {step}, exit {proc.returncode}, ok={ok}", flush=True)
        shutil.rmtree(run_dir)
    label = "SIGTERM/SIGINT" if processes == 1 else f"SIGTERM to --num-processes {processes}"
    t.record(f"{label}: checkpoint, exit 143/130, exact resume", held, notes)


def in_process(out: Path, name: str, *args: str, steps: int) -> tuple[int, str, bool]:
    """``gdmd run`` in this process (no start-up cost): exit code, output, and whether it
    ended in a traceback (an exception that is not gdmd's own exit)."""
    from typer.testing import CliRunner

    from gdmd.cli import make_app

    result = CliRunner().invoke(make_app(), gdmd_cmd(out, name, *args, steps=steps)[3:])
    traceback = result.exception is not None and not isinstance(result.exception, SystemExit)
    return result.exit_code, " ".join(result.output.split()), traceback


def damage_trials(out: Path, t: Trials) -> None:
    name = "damage-base"
    base = out / name
    code, text, _ = in_process(out, name, steps=2)
    assert code == 0, text
    checkpoint = final(base, 2)
    files = sorted(p.name for p in checkpoint.iterdir() if p.name != "COMPLETE")
    cases: list[tuple[str, str, Callable[[Path], None]]] = []
    for file in files:
        cases.append((f"truncate {file}", file, lambda p, f=file: _truncate(p / f)))
        cases.append((f"corrupt {file}", file, lambda p, f=file: _flip(p / f)))
        cases.append((f"delete {file}", file, lambda p, f=file: (p / f).unlink()))
    cases.append(("stray file", "stray.bin", lambda p: (p / "stray.bin").write_bytes(b"x")))
    cases.append(("garbled marker", "COMPLETE", lambda p: (p / "COMPLETE").write_text("{")))
    # The copy lives in another output_dir under the same name: the recipe is the run's.
    copies = out / "copies"
    copy = copies / name
    held: list[bool] = []
    notes: list[str] = []
    for label, named, damage in cases:
        shutil.copytree(base, copy)
        damage(final(copy, 2))
        code, text, traceback = in_process(copies, name, "--resume", "auto", steps=3)
        ok = code == 2 and named in text and not traceback
        if not ok:
            notes.append(f"{label}: exit {code}, traceback {traceback}: {text[-300:]}")
        held.append(ok)
        shutil.rmtree(copy)
    t.record("damaged checkpoint file: exit 2 naming the file, no traceback", held, notes)

    # A checkpoint without its marker is not a checkpoint: the previous one is used.
    shutil.copytree(base, copy)
    (final(copy, 2) / "COMPLETE").unlink()
    code, text, _ = in_process(copies, name, "--resume", "auto", steps=3)
    ok = code == 0 and f"resuming from {copy / 'checkpoints' / 'step-0000001'}" in text
    t.record("checkpoint without COMPLETE: resume takes the previous one", [ok], [text[-300:]])
    shutil.rmtree(copies)
    shutil.rmtree(base)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def recipe_trials(out: Path, t: Trials) -> None:
    name = "recipe-base"
    code, text, _ = in_process(out, name, steps=1)
    assert code == 0, text
    changes = {
        "train.critic_lr": "train.critic_lr=0.5",
        "target.k": "target.k=3",
        "run.seed": "run.seed=99",
        "teacher.guidance_scale": "teacher.guidance_scale=3.0",
        "train.critic_steps": "train.critic_steps=3",
        "reward.brightness.weight": "reward.brightness.weight=2.0",
    }
    held: list[bool] = []
    notes: list[str] = []
    for key, override in changes.items():
        code, text, _ = in_process(out, name, "--resume", "auto", f"--set={override}", steps=2)
        ok = code == 2 and re.search(rf"\b{re.escape(key)}: run has", text) is not None
        if not ok:
            notes.append(f"{key}: exit {code}: {text[-300:]}")
        held.append(ok)
    code, text, _ = in_process(out, name, "--resume", "auto", steps=2)
    held.append(code == 0)
    if code != 0:
        notes.append(f"train.steps=2 was refused: {text[-300:]}")
    t.record(
        "resume with a changed recipe: refused naming the key; longer run resumes", held, notes
    )
    shutil.rmtree(out / name)


def _load_test_module(name: str) -> Any:
    """A helper module of ``tests/reliability`` (shared with the CI-sized tests), imported
    as a package of its own so its relative imports work."""
    import importlib
    import importlib.util

    package = "gdmd_reliability_tests"
    if package not in sys.modules:
        folder = ROOT / "tests" / "reliability"
        spec = importlib.util.spec_from_file_location(
            package, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.{name}")


def fuzz(examples: int, seed: int, out: Path) -> int:
    """``examples`` hypothesis-generated recipes through ``gdmd validate``; count outcomes."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from gdmd.cli import make_app
    from gdmd.manager import build_plugin_manager

    fuzzing = _load_test_module("fuzzing")
    pm = build_plugin_manager()
    app = make_app(pm)
    outcomes = fuzzing.Outcomes()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=fuzzing.cases())
    def check(case: Any) -> None:
        # Every case is counted, failures included: no shrinking, no early stop.
        fuzzing.check_case(case, out, app, pm, outcomes)

    check()
    counts = outcomes.counts
    total = sum(counts.values())
    print("| outcome | recipes |\n|---|---|")
    print(f"| valid (exit 0; resolved.toml loads back the same) | {counts['valid']} |")
    print(f"| refused (exit 2, names the file or the --set, no traceback) | {counts['refused']} |")
    print(f"| anything else (traceback, other exit, unnamed problem) | {counts['failed']} |")
    print(f"| total | {total} |")
    for failure in outcomes.failures:
        print(f"\nFAILED {failure}")
    print(f"\n{time.monotonic() - started:.0f} s, seed {seed}")
    return 0 if not outcomes.failures else 1


def plugin_trials(count: int, out: Path, t: Trials) -> None:
    """Each faulty plugin ``count`` times: named in a clear error, the rest unaffected."""
    faulty = _load_test_module("faulty_plugins")
    for fault in faulty.FAULTS:
        held: list[bool] = []
        notes: list[str] = []
        for i in range(count):
            workdir = out / f"plugin-{len(t.rows)}-{i}"
            workdir.mkdir()
            problems = faulty.check_fault(fault, workdir)
            held.append(not problems)
            notes += [f"trial {i}: {p}" for p in problems]
            shutil.rmtree(workdir)
        t.record(f"plugin: {fault.name}", held, notes)


def full_disk_trials(count: int, out: Path, rng: random.Random, t: Trials) -> None:
    """The disk fills up at a random write of a random checkpoint; ``count`` trials."""
    from gdmd.manager import build_plugin_manager

    disk = _load_test_module("full_disk")
    pm = build_plugin_manager()
    code, text, traceback = disk.gdmd(pm, out, "reference")
    assert code == 0 and traceback is None, text
    reference = out / "reference"
    per_save = disk.writes_per_checkpoint(reference)
    held: list[bool] = []
    notes: list[str] = []
    for i in range(count):
        fail_at = rng.randint(1, per_save * disk.STEPS)
        error = ("oserror", "safetensors")[i % 2]
        problems, step = disk.full_disk_trial(pm, out, reference, f"disk-{i}", fail_at, error)
        print(f"  disk-{i}: write {fail_at} ({error}), checkpoint {step}, ok={not problems}")
        held.append(not problems)
        notes += [f"disk-{i}: {p}" for p in problems]
        shutil.rmtree(out / f"disk-{i}")
    t.record("full disk during a checkpoint: exit 1 naming it, exact resume", held, notes)


def kill_one_trials(count: int, out: Path, rng: random.Random, t: Trials) -> None:
    """kill -9 of rank 0 or 1 of a two-process run after a random number of steps."""
    kill = _load_test_module("kill_one")
    done = kill.run(kill.command(out, "reference"))
    assert done.returncode == 0, done.stderr
    held: list[bool] = []
    notes: list[str] = []
    times: list[float] = []
    for i in range(count):
        rank = i % 2
        after = rng.randint(1, kill.STEPS - 1)
        problems, seconds = kill.kill_one_trial(
            out, out / "reference", f"kill-one-{i}", rank, after
        )
        times.append(seconds)
        print(f"  kill-one-{i}: rank {rank} after {after} steps, stopped in {seconds:.1f} s, "
              f"ok={not problems}", flush=True)
        held.append(not problems)
        notes += [f"kill-one-{i}: {p}" for p in problems]
        shutil.rmtree(out / f"kill-one-{i}")
    slowest = max(times) if times else 0.0
    t.record(
        f"kill -9 of one of 2 processes: all stop (slowest {slowest:.1f} s), exit 137, "
        "exact resume",
        held,
        notes,
    )


#: ``[run] name`` values that name a path rather than a folder: each must be refused.
UNSAFE_NAMES = ["../escape", "../../escape", "/tmp/gdmd-escape", "a/b", "..", ".", "a\\b"]


def path_trials(out: Path, t: Trials) -> None:
    """Run names that are paths, a run folder that is a link leading outside ``output_dir``,
    and an existing run written into without --resume: each refused with exit 2, naming
    what is wrong, and nothing written outside ``output_dir``."""
    # output_dir is out/base/runs, so "../escape" would land in out/base, "../../escape" in out.
    base = out / "base"
    runs = base / "runs"
    runs.mkdir(parents=True)
    shutil.rmtree("/tmp/gdmd-escape", ignore_errors=True)

    def nothing_outside() -> bool:
        return (
            [p.name for p in out.iterdir()] == ["base"]
            and [p.name for p in base.iterdir()] == ["runs"]
            and not Path("/tmp/gdmd-escape").exists()
        )
    for name in UNSAFE_NAMES:
        held = []
        notes = []
        for command in ("validate", "run"):
            cmd = [sys.executable, "-m", "gdmd", command, str(RECIPE),
                   f"--set=run.output_dir={runs}", f"--set=run.name={name}",
                   *(f"--set={c}" for c in COMMON)]
            done = run(cmd)
            ok = done.returncode == 2 and "[run] name" in done.stderr
            ok = ok and "Traceback" not in done.stderr and nothing_outside()
            held.append(ok)
            if not ok:
                notes.append(f"{command} {name!r}: exit {done.returncode}: {done.stderr[-200:]}")
        t.record(f"run name {name!r}: validate and run refuse it (exit 2)", held, notes)
    elsewhere = out / "elsewhere"  # after the name trials, which check out/ holds only base/
    elsewhere.mkdir()
    (runs / "linked").symlink_to(elsewhere, target_is_directory=True)
    done = run(gdmd_cmd(runs, "linked"))
    held = [done.returncode == 2 and not any(elsewhere.iterdir())]
    t.record("run folder that is a link leading outside output_dir: refused", held,
             [] if held[0] else [f"exit {done.returncode}: {done.stderr[-200:]}"])
    (runs / "existing").mkdir()
    (runs / "existing" / "resolved.toml").write_text("# a run written earlier\n")
    done = run(gdmd_cmd(runs, "existing"))
    untouched = (runs / "existing" / "resolved.toml").read_text() == "# a run written earlier\n"
    held = [done.returncode == 2 and untouched and "--resume" in done.stderr]
    t.record("existing run folder without --resume: refused, left as it was", held,
             [] if held[0] else [f"exit {done.returncode}: {done.stderr[-200:]}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-trials", type=int, default=24)
    parser.add_argument("--signal-trials", type=int, default=10)
    parser.add_argument("--ddp-signal-trials", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gdmd-reliability"))
    commands = parser.add_subparsers(dest="command")
    fuzz_parser = commands.add_parser("fuzz", help="Fuzzed recipes through gdmd validate.")
    fuzz_parser.add_argument("--examples", type=int, default=1000)
    plugins_parser = commands.add_parser("plugins", help="Faulty third-party plugins.")
    plugins_parser.add_argument("--trials", type=int, default=5, help="Trials per fault.")
    disk_parser = commands.add_parser("full-disk", help="A full disk during a checkpoint.")
    disk_parser.add_argument("--trials", type=int, default=10)
    kill_parser = commands.add_parser("kill-one", help="kill -9 of one of two processes.")
    kill_parser.add_argument("--trials", type=int, default=6)
    commands.add_parser("paths", help="Run names and folders that would leave output_dir.")
    args = parser.parse_args()
    if args.command == "fuzz":
        return fuzz(args.examples, args.seed, args.out)
    if args.command in ("plugins", "full-disk", "kill-one", "paths"):
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        trials = Trials()
        started = time.monotonic()
        rng = random.Random(args.seed)
        if args.command == "plugins":
            plugin_trials(args.trials, args.out, trials)
        elif args.command == "full-disk":
            full_disk_trials(args.trials, args.out, rng, trials)
        elif args.command == "paths":
            path_trials(args.out, trials)
        else:
            kill_one_trials(args.trials, args.out, rng, trials)
        ok = trials.report()
        print(f"\n{time.monotonic() - started:.0f} s, seed {args.seed}")
        return 0 if ok else 1
    rng = random.Random(args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    trials = Trials()
    started = time.monotonic()

    reference = args.out / "reference"
    done = run(gdmd_cmd(args.out, "reference"))
    assert done.returncode == 0, done.stderr
    recipe_trials(args.out, trials)
    damage_trials(args.out, trials)
    kill_trials(args.out, reference, args.kill_trials, rng, trials)
    signal_trials(args.out, reference, args.signal_trials, rng, trials)
    if args.ddp_signal_trials:
        ddp_reference = args.out / "reference-2"
        done = run(gdmd_cmd(args.out, "reference-2", "--num-processes", "2"))
        assert done.returncode == 0, done.stderr
        signal_trials(args.out, ddp_reference, args.ddp_signal_trials, rng, trials, processes=2)
    ok = trials.report()
    print(f"\n{time.monotonic() - started:.0f} s, seed {args.seed}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
