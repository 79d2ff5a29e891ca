"""Tiny random-weight stand-ins for the files of real reward models, for offline tests.

Tests of a reward that loads a transformers CLIP model, a CLIP tokenizer or a BERT tokenizer
cannot download them; these functions write files in the same formats, small enough to build
in milliseconds. The loading code under test is then exactly the code that loads the real
models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "byte_level_clip_tokenizer",
    "save_tiny_clip",
    "save_tiny_bert_tokenizer",
    "tiny_clip_config",
]


def byte_level_clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77) -> Any:
    """A ``CLIPTokenizer`` with OpenAI CLIP's byte alphabet and no merges (514 tokens).

    The real BPE only adds merges; the byte symbols, the word-final ``</w>`` forms and the
    two special tokens come last, exactly as in the real vocabulary. ``pad_token="!"`` makes
    the tokenizer the laion repositories ship.
    """
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length, pad_token=pad_token)


def tiny_clip_config(
    vocab_size: int = 514,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 16,
    hidden_act: str = "quick_gelu",
    context_length: int = 77,
) -> Any:
    """A ``CLIPConfig`` with both towers ``width`` wide and ``layers`` deep."""
    from transformers import CLIPConfig

    tower = dict(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
    )
    return CLIPConfig(
        text_config=dict(tower, vocab_size=vocab_size, max_position_embeddings=context_length),
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )


def save_tiny_clip(
    directory: str | Path,
    *,
    seed: int = 0,
    pad_token: str = "<|endoftext|>",
    preprocessor: dict[str, Any] | None = None,
    **config: Any,
) -> Path:
    """Write a random-weight ``CLIPModel``, its tokenizer and ``preprocessor_config.json``.

    The directory then has the layout of a hub CLIP repository (``config.json``,
    ``model.safetensors``, tokenizer files, ``preprocessor_config.json``), so
    ``CLIPModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load it. ``preprocessor``
    overrides keys of the image processor config (by default CLIP's: shortest side and centre
    crop to the model's image size, bicubic, OpenAI mean and std).
    """
    import torch
    from transformers import CLIPModel

    directory = Path(directory)
    tokenizer = byte_level_clip_tokenizer(pad_token)
    clip_config = tiny_clip_config(len(tokenizer), **config)
    torch.manual_seed(seed)
    model = CLIPModel(clip_config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    size = clip_config.vision_config.image_size
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    processor.update(preprocessor or {})
    (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return directory


def save_tiny_bert_tokenizer(directory: str | Path, words: list[str] | None = None) -> Path:
    """Write a BERT WordPiece tokenizer (``vocab.txt``) with BLIP's ``[DEC]`` and ``[ENC]``.

    Special tokens take bert-base-uncased's order (``[PAD]`` 0, ``[UNK]``, ``[CLS]``, ``[SEP]``,
    ``[MASK]``), then the lower-case letters and ``words``; ``[DEC]`` and ``[ENC]`` come last
    as BLIP's ``init_tokenizer`` adds them.
    """
    from transformers import BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789!,.")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters]
    vocab += [f"##{c}" for c in letters] + list(words or ["a", "photo", "of", "cat", "dog"])
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tokenizer.save_pretrained(directory)
    return directory
