"""benchmarks/gpu_sd3.py's CPU smoke mode (``--quick``): it runs every part of the GPU check
at toy sizes and writes a report with every expected key, so the GPU run cannot fail on a
typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]
CELL_KEYS = {"target", "layout", "resolution", "batch", "status", "step_s", "step_s_all",
             "build_s", "weights_gib", "peak_reserved_gib", "peak_allocated_gib"}  # fmt: skip


def test_quick_mode_reports_every_measurement(tmp_path: Path) -> None:
    report = tmp_path / "quick.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_sd3.py"), "--quick"]
    command += ["--json", str(report), "--steps", "1", "--warmup", "0", "--critic-steps", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(report.read_text())

    meta = data["meta"]
    assert meta["device"] == "cpu" and meta["size"] == "tiny" and meta["total_s"] > 0
    assert meta["rewards"] == ["hps_sized", "pick_sized"] and "text_encoder_layers" in meta

    installed = {ep.name for ep in entry_points(group="gdmd")}
    assert set(data["end_to_end"]) == {"sd3", "sdxl", "flux2"}
    for family, row in data["end_to_end"].items():
        if family != "sd3" and family not in installed:
            assert row["status"].startswith("skipped"), row
            continue
        assert row["status"] == "ok", row
        assert row["updates"] == 3 and row["diffusers_lora_modules"] > 0
    # On the CPU the diffusers pipeline with the exported LoRA draws gdmd sample's image.
    assert data["end_to_end"]["sd3"]["max_abs_diff_vs_gdmd_sample_255"] <= 1

    cells = {(c["resolution"], c["layout"], c["target"]): c for c in data["matrix"]}
    expected = {
        (r, layout, target)
        for r in (16, 32)
        for layout in ("shared", "copied")
        for target in ("dmd", "gdmd", "gdmd-chunked", "dmdr")
    }
    assert set(cells) == expected and len(data["matrix"]) == len(expected)
    for key, cell in cells.items():
        assert cell["status"] == "ok", (key, cell)
        assert set(cell) == CELL_KEYS, key
        assert cell["step_s"] > 0 and len(cell["step_s_all"]) == 1
