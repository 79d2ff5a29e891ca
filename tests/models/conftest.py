"""Fixtures of the model tests: a tiny SD3 pipeline built in code (random weights, offline)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any hub import: a failed lookup must not wait on DNS

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5Tokenizer

#: max_sequence_length used with the tiny pipeline: short prompts, fast T5.
T5_TOKENS = 16


def _byte_level_clip_tokenizer() -> CLIPTokenizer:
    """CLIP's BPE with no merges: the 256 byte symbols (plain and word-final) + 2 specials."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _tiny_t5_tokenizer() -> T5Tokenizer:
    from transformers import T5Tokenizer

    words = ["▁a", "▁red", "▁cat", "▁two", "▁blue", "▁dogs", "▁"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(w, -1.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_TOKENS)


def _tiny_clip(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    eos = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))  # type: ignore[arg-type]
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=8,
            bos_token_id=int(tokenizer.convert_tokens_to_ids("<|startoftext|>")),  # type: ignore[arg-type]
            eos_token_id=eos,  # pooling reads the hidden state at this id
            pad_token_id=eos,
        )
    )


@pytest.fixture(scope="session")
def sd3_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SD3 pipeline: 16 px images, 4 x 8 x 8 latents, 1 joint block."""
    pytest.importorskip("diffusers")
    return save_tiny_sd3_pipeline(tmp_path_factory.mktemp("tiny-sd3"))


def save_tiny_sd3_pipeline(directory: Path) -> Path:
    """Build the tiny random-weight SD3 pipeline (seeded) and save it to ``directory``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip_tokenizer = _byte_level_clip_tokenizer()
    pipe: Any = StableDiffusion3Pipeline(
        # caption_projection_dim = heads * head_dim; pooled = 8 + 8; joint = T5 d_model.
        transformer=SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            pooled_projection_dim=16,
            pos_embed_max_size=16,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        # A non-trivial scaling/shift so decode's un-normalisation is actually tested.
        vae=AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            block_out_channels=[8, 16],
            latent_channels=4,
            norm_num_groups=4,
            layers_per_block=1,
            sample_size=16,
            scaling_factor=1.5,
            shift_factor=0.1,
        ),
        text_encoder=_tiny_clip(clip_tokenizer),
        tokenizer=clip_tokenizer,
        text_encoder_2=_tiny_clip(clip_tokenizer),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=T5EncoderModel(
            T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        ),
        tokenizer_3=_tiny_t5_tokenizer(),
    )
    pipe.save_pretrained(directory)
    return directory
