"""Score the parity fixtures with gdmd's own rewards and compare with the official scores.

    python benchmarks/parity/compare.py FIXTURES [--write-docs] [--rewards hpsv2,clip]

Runs in the main venv. For each ``FIXTURES/<reward>/cases.json`` written by an
``official_*.py`` script, builds our reward from the plugin registry with the fixture's
checkpoint and tokenizer paths, loads every PNG as a float tensor in [0, 1] (``[1, 3, H, W]``,
no PIL resize: our reward resizes on tensors) and prints, per reward, the largest
``|ours - official|`` on images already at the model's size (the arithmetic: weights,
tokeniser, normalisation, pooling) and on images that need resizing. A third column feeds our
reward the official side's own preprocessed 224x224 input (un-normalised back to [0, 1]), so
a resize difference is told apart from a model difference. ``--write-docs`` rewrites the table
in docs/parity.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "parity.md"
BEGIN, END = "<!-- parity-table:begin -->", "<!-- parity-table:end -->"
REWARDS = ("hpsv2", "imagereward", "pickscore", "clip")
#: The normalisation each official preprocessing applies (CLIP's, for all four).
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


@dataclass
class Result:
    reward: str
    cases: int
    native: float
    resized: float
    official_pixels: float | None
    score_range: tuple[float, float]
    torchvision: str | None
    official: str
    worst: dict[str, Any]


def load_png(path: Path) -> torch.Tensor:
    """A PNG as a float tensor ``[1, 3, H, W]`` in [0, 1], the way a decoder hands images over."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def resolve(fixture: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The fixture's reward config with its relative paths made absolute."""
    resolved = {}
    for key, value in config.items():
        candidate = fixture / value if isinstance(value, str) else None
        resolved[key] = str(candidate) if candidate is not None and candidate.exists() else value
    return resolved


def build_reward(name: str, config: dict[str, Any]) -> Any:
    from gdmd.interfaces import BuildContext
    from gdmd.manager import build_plugin_manager

    spec = build_plugin_manager().registries.rewards.get(name)
    ctx = BuildContext(
        device=torch.device("cpu"),
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
    )
    return spec.build(spec.validate_config(config), ctx)


def score(reward: Any, image: torch.Tensor, prompts: Sequence[str]) -> list[float]:
    """Our scores of one image against several prompts (one batch, the image repeated)."""
    with torch.no_grad():
        batch = image.expand(len(prompts), -1, -1, -1)
        return [float(s) for s in reward(batch, list(prompts))]


def compare(fixture: Path) -> Result:
    spec = json.loads((fixture / "cases.json").read_text())
    env = json.loads((fixture / "env.json").read_text())
    started = time.time()
    reward = build_reward(spec["reward"], resolve(fixture, spec["config"]))
    pixels_path = fixture / "official_pixels.pt"
    official_pixels = torch.load(pixels_path, weights_only=True) if pixels_path.exists() else {}

    by_image: dict[str, list[dict[str, Any]]] = {}
    for case in spec["cases"]:
        by_image.setdefault(case["image"], []).append(case)
    native, resized, via_official = [0.0], [0.0], [0.0]
    worst: dict[str, Any] = {"diff": -1.0}
    for image, cases in by_image.items():
        prompts = [c["prompt"] for c in cases]
        ours = score(reward, load_png(fixture / image), prompts)
        for case, value in zip(cases, ours, strict=True):
            diff = abs(value - case["score"])
            (native if case["native"] else resized).append(diff)
            if diff > worst["diff"]:
                worst = {
                    "diff": diff,
                    "image": image,
                    "prompt": case["prompt"][:40],
                    "ours": value,
                    "official": case["score"],
                }
        if not cases[0]["native"] and image in official_pixels:
            # The official 224x224 input, back in [0, 1]: our resize becomes the identity.
            restored = (official_pixels[image].float() * STD + MEAN).unsqueeze(0)
            ours = score(reward, restored, prompts)
            via_official += [abs(v - c["score"]) for v, c in zip(ours, cases, strict=True)]
    scores = [c["score"] for c in spec["cases"]]
    print(
        f"{spec['reward']}: {len(scores)} cases compared in {time.time() - started:.0f} s",
        file=sys.stderr,
    )
    return Result(
        reward=spec["reward"],
        cases=len(scores),
        native=max(native),
        resized=max(resized),
        official_pixels=max(via_official) if official_pixels else None,
        score_range=(min(scores), max(scores)),
        torchvision=env.get("torchvision"),
        official=spec["official"],
        worst=worst,
    )


def table(results: Sequence[Result]) -> str:
    lines = [
        "| reward | cases | official score range | max \\|Δ\\| native 224 px | max \\|Δ\\| through "
        "the resize | max \\|Δ\\| on the official 224 px input | official env torchvision |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        via = f"{r.official_pixels:.1e}" if r.official_pixels is not None else "—"
        lines.append(
            f"| `{r.reward}` | {r.cases} | {r.score_range[0]:.4g} … {r.score_range[1]:.4g} | "
            f"{r.native:.1e} | {r.resized:.1e} | {via} | {r.torchvision or 'none (main venv)'} |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOCS.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOCS} has no {BEGIN} ... {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"wrote the table to {DOCS.relative_to(ROOT)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fixtures", type=Path)
    parser.add_argument(
        "--rewards",
        default=",".join(REWARDS),
        help="comma-separated subset of " + ", ".join(REWARDS),
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite the table in docs/parity.md"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results, missing = [], []
    for name in args.rewards.split(","):
        fixture = args.fixtures / name
        if not (fixture / "cases.json").exists():
            missing.append(f"{name} (no {fixture}/cases.json)")
            continue
        result = compare(fixture)
        results.append(result)
        print(f"  worst case: {result.worst}", file=sys.stderr)
    text = table(results)
    print(text)
    if missing:
        print("not compared: " + "; ".join(missing), file=sys.stderr)
    if args.write_docs:
        if missing:
            raise SystemExit("not writing docs/parity.md: some rewards were not compared")
        write_docs(text)


if __name__ == "__main__":
    main()
