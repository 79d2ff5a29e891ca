"""Nothing gdmd reads from a run directory or its model cache is unpickled.

A pickle whose execution would create a marker file is planted in every file of a finished
run that gdmd reads back (each file of the newest checkpoint, the optimizer states among them,
``resolved.toml``, ``run.json``, ``plugins.lock``) and in the files of the saved toy
networks. Then ``gdmd run --resume auto`` and ``gdmd sample`` run on it through the command
line: the marker must never appear, and a file gdmd reads must be refused with an error
that names it, without a traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from gdmd.cli import make_app
from gdmd.errors import GdmdError
from gdmd.manager import GdmdPluginManager, build_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny_cpu.toml"
SETS = [
    "train.batch_size=2",
    "target.k=2",
    "train.critic_steps=1",
    "train.checkpoint_every=1",
    'log.trackers=["jsonl"]',
    "run.name=pickled",
]


class _Planted:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def payload(marker: Path, fmt: str) -> bytes:
    """The planted pickle: ``text`` (protocol 0, ASCII, reaches text parsers), ``binary``
    (the newest protocol) or ``torch`` (what ``torch.save`` writes: a zip around it)."""
    if fmt == "text":
        return pickle.dumps(_Planted(marker), protocol=0)
    if fmt == "binary":
        return pickle.dumps(_Planted(marker), protocol=pickle.HIGHEST_PROTOCOL)
    buffer = io.BytesIO()
    torch.save(_Planted(marker), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["text", "binary", "torch"])
def test_the_payload_would_run_if_unpickled(tmp_path: Path, fmt: str) -> None:
    # Without this, a payload that never runs would make every test below pass.
    marker = tmp_path / "marker"
    data = payload(marker, fmt)
    if fmt == "torch":
        torch.load(io.BytesIO(data), weights_only=False)
    else:
        pickle.loads(data)
    assert marker.exists()


def _invoke(pm: GdmdPluginManager, *args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(make_app(pm), list(args), env={"COLUMNS": "10000"})
    exc = result.exception
    traceback = exc if exc is not None and not isinstance(exc, SystemExit) else None
    return result.exit_code, " ".join(result.output.split()), traceback


@pytest.fixture(scope="module")
def pm() -> GdmdPluginManager:
    return build_plugin_manager(load_entrypoints=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, pm: GdmdPluginManager) -> Path:
    out = tmp_path_factory.mktemp("runs")
    sets = [*SETS, f"run.output_dir={out}", "train.steps=2"]
    code, text, traceback = _invoke(pm, "run", str(RECIPE), *(f"--set={s}" for s in sets))
    assert code == 0 and traceback is None, text
    return out / "pickled"


def _checkpoint_files(run: Path) -> list[str]:
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    return [f"checkpoints/{newest.name}/{p.name}" for p in sorted(newest.iterdir())]


def test_the_run_has_the_files_planted_into(finished_run: Path) -> None:
    names = _checkpoint_files(finished_run)
    for name in ("optim_student.safetensors", "optim_critic.json", "student.safetensors"):
        assert f"checkpoints/step-0000002/{name}" in names
    for name in [*names, *RUN_FILES]:
        assert (finished_run / name).is_file(), name


def _plant(run: Path, name: str, data: bytes) -> None:
    """Replace ``name`` by ``data``; in a checkpoint, also update the checksum its marker
    holds, so the payload reaches the file's reader instead of the checksum check."""
    path = run / name
    path.write_bytes(data)
    marker = path.parent / "COMPLETE"
    if path.parent.parent.name == "checkpoints" and path != marker:
        listing = json.loads(marker.read_text())
        listing["files"][path.name] = hashlib.sha256(data).hexdigest()
        marker.write_text(json.dumps(listing))


def _try_planted(
    pm: GdmdPluginManager, finished_run: Path, tmp_path: Path, name: str, fmt: str
) -> list[tuple[str, int, str, BaseException | None, bool]]:
    """Plant a ``fmt`` payload in a copy of the run's ``name``, then resume the copy and
    sample from it: ``(command, exit code, output, traceback, marker appeared)`` of each."""
    copies = tmp_path / name.replace("/", "_")
    run = copies / finished_run.name
    shutil.copytree(finished_run, run)
    marker = tmp_path / f"marker-{name.replace('/', '_')}"
    _plant(run, name, payload(marker, fmt))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    sets = [*SETS, f"run.output_dir={copies}", "train.steps=3"]
    commands = {
        "resume": ["run", str(RECIPE), *(f"--set={s}" for s in sets), "--resume=auto"],
        "sample": ["sample", str(run), f"--prompts-file={prompts}", f"--out={tmp_path}/s"],
    }
    outcomes = []
    for label, args in commands.items():
        code, text, traceback = _invoke(pm, *args)
        outcomes.append((label, code, text, traceback, marker.exists()))
    shutil.rmtree(copies)
    return outcomes


def test_pickles_planted_in_a_checkpoint_are_refused_by_name(
    finished_run: Path, pm: GdmdPluginManager, tmp_path: Path
) -> None:
    failures = []
    for name in _checkpoint_files(finished_run):
        # The payload a text reader would meet, and torch.save's zip where tensors live.
        fmt = "torch" if name.endswith(".safetensors") else "text"
        for label, code, text, traceback, ran in _try_planted(
            pm, finished_run, tmp_path, name, fmt
        ):
            if ran:
                failures.append(f"{name} ({label}): the planted pickle ran")
            if traceback is not None:
                failures.append(f"{name} ({label}): {type(traceback).__name__}: {traceback}")
            elif code == 0 or Path(name).name not in text:
                failures.append(f"{name} ({label}): exit {code}, file not named: {text[-300:]}")
    assert not failures, "\n".join(failures)


RUN_FILES = ["resolved.toml", "run.json", "plugins.lock"]
@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("resolved.toml", "text"),
        ("resolved.toml", "binary"),
        ("run.json", "text"),
        ("run.json", "binary"),
        ("plugins.lock", "text"),
        ("plugins.lock", "binary"),
    ],
)
def test_pickles_planted_in_run_files_never_run(
    finished_run: Path, pm: GdmdPluginManager, tmp_path: Path, name: str, fmt: str
) -> None:
    # run.json and plugins.lock may be rewritten or left unread; a refusal must name them.
    for label, code, text, traceback, ran in _try_planted(pm, finished_run, tmp_path, name, fmt):
        assert not ran, f"{name} ({label}): the planted pickle ran"
        assert traceback is None, f"{name} ({label}): {traceback!r}"
        if code != 0 or name == "resolved.toml":
            assert code == 2 and name in text, f"{name} ({label}): exit {code}: {text[-300:]}"


def test_saved_toy_networks_refuse_a_pickle(tmp_path: Path) -> None:
    from gdmd.toy.saving import CONFIG_FILE, WEIGHTS_FILE, read_network

    marker = tmp_path / "marker"
    for planted in (CONFIG_FILE, WEIGHTS_FILE):
        for fmt in ("text", "binary", "torch"):
            directory = tmp_path / f"{planted}-{fmt}"
            directory.mkdir()
            (directory / CONFIG_FILE).write_text(json.dumps({"format": "f", "format_version": 1}))
            (directory / WEIGHTS_FILE).write_bytes(b"")
            (directory / planted).write_bytes(payload(marker, fmt))
            with pytest.raises(GdmdError, match=planted.replace(".", r"\.")):
                read_network(directory, "f", 1, "evaluator")
    assert not marker.exists()


def test_cached_tiny_model_refuses_a_pickle(tmp_path: Path) -> None:
    from gdmd.models.tiny import CONFIG_FILE, WEIGHTS_FILE, TinyDiffusionModel, TinyUNetConfig

    saved = tmp_path / "saved"
    TinyDiffusionModel(TinyUNetConfig(image_size=8, channels=[8, 8])).save_pretrained(saved)
    marker = tmp_path / "marker"
    for planted in (CONFIG_FILE, WEIGHTS_FILE):
        for fmt in ("text", "binary", "torch"):
            directory = tmp_path / f"{planted}-{fmt}"
            shutil.copytree(saved, directory)
            (directory / planted).write_bytes(payload(marker, fmt))
            with pytest.raises(GdmdError, match=planted.replace(".", r"\.")):
                TinyDiffusionModel.from_pretrained(directory)
    assert not marker.exists()
