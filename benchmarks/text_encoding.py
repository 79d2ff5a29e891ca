"""Text-encoder calls and peak memory of the training loop on the built-in ``tiny-unet`` family.

    python benchmarks/text_encoding.py [--steps 3] [--critic-steps 5] [--batch 4]
                                       [--accumulation 1] [--loop FILE]

Builds a tiny random-weight teacher (nothing is downloaded), runs :func:`gdmd.train.loop.train`
with a ``gdmd`` target (K = 2, vary = "both": teacher, critic and critic snapshots all take
the conditioning) and prints, per student update, the student's ``encode_prompts`` calls,
the prompts they encoded, the prompt batches the update drew, and the peak of the bytes the
CPU allocator held above the start of ``train`` (``torch.profiler`` memory events).
``--loop FILE`` loads the loop from another file (an older ``gdmd/train/loop.py``, to compare).
Results: docs/benchmarks.md, "Text encoders once per update".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KINETO_LOG_LEVEL", "99")

ARCHITECTURE = {
    "image_size": 8,
    "channels": (8, 16),
    "attention_levels": (-1,),
    "text_width": 16,
    "text_layers": 1,
    "heads": 2,
}


def recipe_text(root: Path, args: argparse.Namespace) -> str:
    return f"""
[run]
name = "encode"
output_dir = "{root / "runs"}"

[teacher]
kind = "tiny-unet"
model = "{root / "teacher"}"
guidance_scale = 2.0

[student]
steps = 2

[critic]

[reward.red]
kind = "channel"
channel = "red"

[target]
kind = "gdmd"
k = 2
vary = "both"

[prompts]
kind = "list"
prompts = ["a red circle", "a blue square", "two green triangles"]

[train]
steps = {args.steps}
batch_size = {args.batch}
critic_steps = {args.critic_steps}

[accelerate]
cpu = true
gradient_accumulation_steps = {args.accumulation}

[log]
trackers = ["jsonl"]
"""


def load_train(loop_file: str | None) -> Any:
    if loop_file is None:
        from gdmd.train.loop import train

        return train
    spec = importlib.util.spec_from_file_location("gdmd_loop_under_test", loop_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train


def measure(args: argparse.Namespace, root: Path) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    from gdmd.manager import build_plugin_manager
    from gdmd.models.tiny import TinyDiffusionModel
    from gdmd.models.tiny_config import TinyUNetConfig
    from gdmd.recipe import load_recipe
    from gdmd.run.build import build_components, loop_settings, make_accelerator

    torch.manual_seed(0)
    TinyDiffusionModel(TinyUNetConfig(**ARCHITECTURE)).save_pretrained(root / "teacher")
    path = root / "recipe.toml"
    path.write_text(recipe_text(root, args))
    recipe = load_recipe(path, build_plugin_manager(load_entrypoints=False))
    run_dir = root / "runs" / "encode"
    run_dir.mkdir(parents=True)
    accelerator = make_accelerator(recipe, run_dir)
    parts = build_components(recipe, accelerator)
    settings = loop_settings(recipe, parts.teacher.schedule)
    encode = parts.student.encode_prompts
    calls: list[int] = []

    def counting(prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        calls.append(len(prompts))
        return encode(prompts)

    parts.student.encode_prompts = counting  # type: ignore[method-assign]
    train = load_train(args.loop)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train(parts, settings, accelerator, run_dir)
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        live += nbytes
        peak = max(peak, live)
    return {
        "encoder calls per update": len(calls) / args.steps,
        "prompts encoded per update": sum(calls) / args.steps,
        "prompt batches per update": (args.critic_steps + 1) * args.accumulation,
        "peak allocated above start, MiB": peak / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="student updates")
    parser.add_argument("--critic-steps", type=int, default=5, help="critic updates per update")
    parser.add_argument("--batch", type=int, default=4, help="prompts per batch")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per update")
    parser.add_argument("--loop", help="load train() from this file instead of gdmd.train.loop")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(args, Path(tmp))
    for name, value in results.items():
        print(f"{name:>34}: {value:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
