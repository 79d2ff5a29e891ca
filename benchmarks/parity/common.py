"""What every official-side parity script shares: test images, prompts, tokenizers, file layout.

Each ``official_<name>.py`` runs in its own virtual environment (see the ``parity`` block of the
Makefile) and writes one fixture directory ``OUT/<reward>/``:

    images/*.png     the test images (uint8 RGB), some at the model's 224x224, some not
    <weights>        random weights in the official checkpoint format, at the real architecture
    tokenizer/ ...   tokenizer / processor directories built from vocabularies shipped in packages
    cases.json       {"reward", "config", "cases": [{"image", "prompt", "native", "score"}], ...}
    env.json         versions of python, torch, torchvision, transformers and the official package

``config`` holds the reward's own recipe keys, with paths relative to the fixture directory;
``compare.py`` builds our reward from it. This module needs numpy, Pillow and (for the CLIP
tokenizer) transformers >= 5, so it runs in every parity environment.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MODEL_SIZE = 224

#: Prompts: plain; "!" punctuation (a pad token "!" in an HF CLIP tokenizer would swallow it);
#: one longer than 77 CLIP tokens (and than ImageReward's 35), so truncation is exercised.
PROMPTS: tuple[str, ...] = (
    "a red circle above a blue square",
    "Wow!! A bright yellow sunflower field at noon! Amazing!!!",
    "a highly detailed photograph of an old stone lighthouse standing on a rocky cliff above a "
    "stormy grey sea at dusk, with waves crashing against the rocks below, seagulls circling in "
    "the wind, a warm orange light glowing from the lantern room, dark clouds gathering on the "
    "horizon, wet reflections on the path that winds up to the door, a small wooden boat pulled "
    "up on the shingle beach, and the first stars appearing in a clear patch of sky overhead",
)

#: Test images: name -> (width, height). ``native`` ones are at the model's size, so resizing
#: is the identity in every path and only the arithmetic is compared.
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "native-shapes": (224, 224),
    "native-noise": (224, 224),
    "square-256": (256, 256),
    "landscape-320x240": (320, 240),
    "portrait-200x300": (200, 300),
    "upscale-96": (96, 96),
}


def _image_array(name: str, width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic RGB image mixing smooth gradients, hard-edged shapes and fine texture,
    so that resizing and normalisation both matter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xx / max(width - 1, 1), yy / max(height - 1, 1)
    img = np.stack([u, v, 1.0 - 0.5 * (u + v)], axis=-1)
    for _ in range(5):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.25)
        colour = rng.uniform(0.0, 1.0, size=3)
        if rng.uniform() < 0.5:
            inside = (u - cx) ** 2 + (v - cy) ** 2 < r**2
        else:
            inside = (abs(u - cx) < r) & (abs(v - cy) < r * 0.7)
        img[inside] = colour
    texture_weight = 0.5 if "noise" in name else 0.12
    img = (1 - texture_weight) * img + texture_weight * rng.uniform(0.0, 1.0, img.shape)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + 0.5 * yy) / 7.0)
    img[..., 1] = 0.85 * img[..., 1] + 0.15 * stripes
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def write_images(out: Path) -> list[dict[str, Any]]:
    """Write the test images as PNG under ``out/images``; returns one record per image."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for seed, (name, (width, height)) in enumerate(IMAGE_SIZES.items()):
        path = out / "images" / f"{name}.png"
        Image.fromarray(_image_array(name, width, height, seed)).save(path)
        records.append(
            {
                "image": f"images/{name}.png",
                "width": width,
                "height": height,
                "native": (width, height) == (MODEL_SIZE, MODEL_SIZE),
            }
        )
    return records


def load_image(out: Path, record: dict[str, Any]) -> Image.Image:
    """A fixture image as the official scorers receive it: a PIL RGB image."""
    return Image.open(out / record["image"]).convert("RGB")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2, CLIP), in vocabulary
    order: printable Latin-1 bytes first, mapped to themselves, then the other bytes, mapped to
    code points from 256 upwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    table = {byte: chr(byte) for byte in printable}
    table.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return table


def clip_vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

    The vocabulary is built as OpenAI's tokenizer builds it: the 256 byte characters, the same
    with ``</w>``, the first 49152 - 256 - 2 merges joined, then the two special tokens
    (49408 entries; ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407).
    """
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges  # type: ignore[return-value]


def clip_tokenizer(bpe_gz: Path, pad_token: str) -> Any:
    """A transformers ``CLIPTokenizer`` (max length 77) on the real CLIP BPE vocabulary.

    ``pad_token``: ``"<|endoftext|>"`` as in OpenAI's hub tokenizers, ``"!"`` as in the
    laion / Stable Diffusion 2 family, whose tokenizer then splits ``"!!"`` into pad tokens.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(bpe_gz)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def perturb_layer_norms(model: Any, generator: Any) -> None:
    """Give every LayerNorm of ``model`` a random gain ``1 + 0.3 N(0,1)`` and bias ``0.1 N(0,1)``.

    At init every LayerNorm is the identity, and a random ViT then gives nearly the same
    embedding to every image; random affine LayerNorms (with a stronger patch embedding, which
    each script scales itself) make image content move the score.
    """
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                gain = torch.randn(module.weight.shape, generator=generator)
                module.weight.copy_(1.0 + 0.3 * gain)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


#: How every script describes the perturbation shared by all of them.
PERTURBATION = (
    "every LayerNorm gain ~ 1 + 0.3 N(0,1) and bias ~ 0.1 N(0,1), and the patch embedding x4"
)


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` when absent) plus the Python version."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_cases(
    out: Path,
    reward: str,
    config: dict[str, Any],
    cases: Sequence[dict[str, Any]],
    official: str,
    notes: str,
    env_packages: Iterable[str],
) -> None:
    """Write ``cases.json`` and ``env.json``; ``cases.json`` last, as it is the make target."""
    write_json(out / "env.json", versions(env_packages))
    write_json(
        out / "cases.json",
        {
            "reward": reward,
            "config": config,
            "model_size": MODEL_SIZE,
            "official": official,
            "notes": notes,
            "cases": list(cases),
        },
    )
