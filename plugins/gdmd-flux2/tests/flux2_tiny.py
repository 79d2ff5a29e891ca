"""A tiny random-weight FLUX.2 [klein] pipeline built in code and saved (offline).

The tokenizer is a real ``Qwen2TokenizerFast`` (the class the klein pipelines ship) with a
byte-level vocabulary and no merges, and a chat template cut down to what the pipeline uses of
Qwen3's: one user turn and the generation prompt with an empty think block when
``enable_thinking`` is false. The Qwen3 encoder has 27 layers (so the pipeline's hidden states
9, 18 and 27 exist) of width 16; the transformer has one block of each kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Prompt length used with the tiny pipeline (the chat template alone takes 34 tokens).
TOKENS = 48
#: Image side of the tiny pipeline: VAE scale factor 2, then 2 x 2 patches -> 4 x 4 tokens.
RESOLUTION = 16

_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def tiny_qwen_tokenizer() -> Any:
    """GPT-2's byte alphabet as the whole vocabulary (256 tokens), plus Qwen's specials."""
    from transformers import Qwen2TokenizerFast

    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    tokenizer = Qwen2TokenizerFast(
        vocab={s: i for i, s in enumerate(symbols)},
        merges=[],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]}
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def save_tiny_flux2_pipeline(directory: Path, dynamic_shift: bool = True) -> Path:
    """Build the tiny Flux2KleinPipeline (seeded) and save it to ``directory``."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer()
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=27,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    )
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 VAE channels x 2 x 2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=48,  # 3 stacked Qwen3 layers x 16
        timestep_guidance_channels=16,
        axes_dims_rope=(2, 2, 2, 2),
        guidance_embeds=False,
    )
    vae = AutoencoderKLFlux2(
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16],
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=RESOLUTION,
    )
    # Non-trivial batch-norm statistics, so decoding's de-normalisation is actually tested.
    vae.bn.running_mean.normal_(0.0, 0.5)
    vae.bn.running_var.uniform_(0.5, 2.0)
    # The klein scheduler's shape: FLUX's dynamic (exponential) shifting by resolution.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=dynamic_shift,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe: Any = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    )
    pipe.save_pretrained(directory)
    return directory
