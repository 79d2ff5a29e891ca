"""Step time and peak GPU memory of SD3-Medium-sized distillation, per target and layout.

    python benchmarks/gpu_sd3.py                      # SD3-Medium shape, 1024 px, on a GPU
    python benchmarks/gpu_sd3.py --size tiny          # the same matrix, tiny, on CPU (a check)
    python benchmarks/gpu_sd3.py --only gdmd-chunked --layout shared --batch 2 --json out.json

Random weights at real size: the SD3-Medium transformer (2.03B parameters, 24 joint blocks)
and the SD3 VAE (16 latent channels) in bfloat16, and a ViT-L/14-sized CLIP as the reward.
The text encoders have the real widths (CLIP-L 768, CLIP-G 1280, T5-XXL 4096) but one layer
each: they run once per prompt without grad, so only their (shared, frozen) weights would
differ from the real ones, by about 10 GB that no target or layout changes. Nothing is
downloaded. Costs do not depend on what the weights are.

For each target (``dmd``, ``gdmd`` K = 4 unchunked, ``gdmd`` K = 4 with ``chunk_size`` =
batch, ``dmdr`` back-propagating through the VAE decoder and the CLIP reward) and each
layout (``share_base`` true: one frozen base for teacher, student and critic; false: a copy
each), the real loop (:func:`gdmd.train.loop.train`, built from a recipe as ``gdmd run``
does, bf16 autocast, LoRA rank 64 student / 32 critic, gradient checkpointing, 5 critic
updates per student update) runs ``--warmup + --steps`` student updates. Reported: the
median step time of the timed steps, the GPU memory held after building (weights), and the
peak allocated during training (``torch.cuda.max_memory_allocated``).

The script needs a CUDA GPU for ``--size medium`` (about 40 GiB for the copied layout at
batch 1); results and notes go to docs/benchmarks.md ("SD3 on a GPU").
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: Transformer, VAE and reward shapes. "medium" is SD3-Medium's transformer config.
SIZES: dict[str, dict[str, Any]] = {
    "medium": {
        "transformer": dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=192,
        ),
        "vae": dict(
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            latent_channels=16,
            norm_num_groups=32,
            sample_size=1024,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        "clip_widths": (768, 1280),
        "t5": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64),
        "reward_vision": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        "reward_text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12),
        "resolution": 1024,
        "lora": (64, 32),
        "dtype": "bfloat16",
    },
    "tiny": {
        "transformer": dict(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=16,
            pos_embed_max_size=16,
        ),
        "vae": dict(
            block_out_channels=[8, 16],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=16,
            scaling_factor=1.5,
            shift_factor=0.1,
        ),
        "clip_widths": (8, 8),
        "t5": dict(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2),
        "reward_vision": dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        "reward_text": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1),
        "resolution": 16,
        "lora": (4, 2),
        "dtype": "float32",
    },
}

TARGETS = {
    "dmd": 'kind = "dmd"',
    "gdmd": 'kind = "gdmd"\nk = 4\nvary = "t"',
    "gdmd-chunked": 'kind = "gdmd"\nk = 4\nvary = "t"\nchunk_size = {batch}',
    "dmdr": 'kind = "dmdr"',
}
LAYOUTS = {"shared": True, "copied": False}
T5_TOKENS = 77


# -- random-weight models, saved as a diffusers pipeline and a CLIP directory -----------------


def _byte_clip_tokenizer() -> Any:
    """CLIP's BPE with no merges: the 256 byte symbols (plain and word-final) + 2 specials."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{c}", -2.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_TOKENS)


def _text_config(tokenizer: Any, **widths: Any) -> dict[str, Any]:
    eos = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    return dict(
        vocab_size=len(tokenizer),
        num_attention_heads=max(2, widths["hidden_size"] // 64),
        max_position_embeddings=77,
        bos_token_id=int(tokenizer.convert_tokens_to_ids("<|startoftext|>")),
        eos_token_id=eos,
        pad_token_id=eos,
        **widths,
    )


def save_pipeline(directory: Path, size: dict[str, Any]) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    dtype = getattr(torch, size["dtype"])
    clip_tokenizer = _byte_clip_tokenizer()
    encoders = [
        CLIPTextModelWithProjection(
            CLIPTextConfig(
                **_text_config(
                    clip_tokenizer, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=1
                ),
                projection_dim=w,
            )
        ).to(dtype)
        for w in size["clip_widths"]
    ]
    t5_tokenizer = _t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe: Any = StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**size["transformer"]).to(dtype),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=AutoencoderKL(
                down_block_types=["DownEncoderBlock2D"] * len(size["vae"]["block_out_channels"]),
                up_block_types=["UpDecoderBlock2D"] * len(size["vae"]["block_out_channels"]),
                **size["vae"],
            ).to(dtype),
            text_encoder=encoders[0],
            tokenizer=clip_tokenizer,
            text_encoder_2=encoders[1],
            tokenizer_2=clip_tokenizer,
            text_encoder_3=T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), **size["t5"])).to(
                dtype
            ),
            tokenizer_3=t5_tokenizer,
        )
    pipe.save_pretrained(directory)


def save_reward(directory: Path, size: dict[str, Any]) -> None:
    from transformers import CLIPConfig, CLIPModel

    tokenizer = _byte_clip_tokenizer()
    config = CLIPConfig(
        text_config=_text_config(tokenizer, **size["reward_text"]),
        vision_config=size["reward_vision"],
        projection_dim=size["reward_text"]["hidden_size"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


# -- one measurement -------------------------------------------------------------------------


def recipe_text(
    root: Path, size: dict[str, Any], target: str, shared: bool, args: argparse.Namespace
) -> str:
    student_rank, critic_rank = size["lora"]
    model = (
        f'kind = "sd3"\ndtype = "{size["dtype"]}"\nmax_sequence_length = {T5_TOKENS}\n'
        f"gradient_checkpointing = true"
    )
    share = str(shared).lower()
    mixed = "bf16" if size["dtype"] == "bfloat16" and torch.cuda.is_available() else "no"
    return f"""
[run]
name = "bench"
seed = 0
output_dir = "{root / "runs"}"

[teacher]
{model}
model = "{root / "pipeline"}"
guidance_scale = 7.0
resolution = {args.resolution or size["resolution"]}

[student]
{model}
init_from = "teacher"
steps = 4
timesteps = [1.0, 0.75, 0.5, 0.25]
lora_rank = {student_rank}
share_base = {share}

[critic]
{model}
init_from = "teacher"
lora_rank = {critic_rank}
share_base = {share}

[reward.clip]
kind = "clip"
model = "{root / "reward"}"
dtype = "{size["dtype"]}"

[target]
{TARGETS[target].format(batch=args.batch)}

[prompts]
kind = "list"
prompts = ["a red fox in the snow", "two cats on a sofa", "a lighthouse at dusk"]

[train]
steps = {args.warmup + args.steps}
batch_size = {args.batch}
critic_steps = {args.critic_steps}
student_lr = 1e-6
critic_lr = 5e-7

[accelerate]
mixed_precision = "{mixed}"

[log]
trackers = ["jsonl"]
"""


def measure(root: Path, size: dict[str, Any], target: str, layout: str, args: Any) -> dict:
    import shutil

    from gdmd.manager import build_plugin_manager
    from gdmd.recipe import load_recipe
    from gdmd.run.build import build_components, loop_settings, make_accelerator
    from gdmd.train.loop import train

    shutil.rmtree(root / "runs", ignore_errors=True)
    path = root / f"{target}-{layout}.toml"
    path.write_text(recipe_text(root, size, target, LAYOUTS[layout], args))
    recipe = load_recipe(path, build_plugin_manager())
    run_dir = root / "runs" / "bench"
    run_dir.mkdir(parents=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    accelerator = make_accelerator(recipe, run_dir)
    start = time.perf_counter()
    parts = build_components(recipe, accelerator)
    build_s = time.perf_counter() - start
    weights = (torch.cuda.memory_allocated() - before) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(parts, loop_settings(recipe, parts.teacher.schedule), accelerator, run_dir)
    peak = (torch.cuda.max_memory_allocated() - before) if cuda else 0
    times = [m["step_time"] for m in result.metrics][args.warmup :]
    row = {
        "target": target,
        "layout": layout,
        "step_s": statistics.median(times),
        "step_s_all": times,
        "build_s": build_s,
        "weights_gib": weights / 2**30,
        "peak_gib": peak / 2**30,
    }
    del parts, result, accelerator
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--batch", type=int, default=1, help="prompts per student update")
    parser.add_argument("--steps", type=int, default=3, help="timed student updates")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first updates")
    parser.add_argument("--critic-steps", type=int, default=5)
    parser.add_argument("--resolution", type=int, help="image side (default: the size's)")
    parser.add_argument("--only", choices=sorted(TARGETS), action="append", help="repeatable")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), action="append", help="repeatable")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.size != "tiny" and not torch.cuda.is_available():
        print("--size medium needs a CUDA GPU; try --size tiny for a CPU check", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gdmd-gpu-sd3-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        save_pipeline(root / "pipeline", size)
        save_reward(root / "reward", size)
        print(f"built and saved the random-weight models in {time.perf_counter() - start:.0f} s")
        for layout in args.layout or list(LAYOUTS):
            for target in args.only or list(TARGETS):
                row = measure(root, size, target, layout, args)
                rows.append(row)
                print(
                    f"{target:>13} {layout:>6}: {row['step_s']:.2f} s/step, weights "
                    f"{row['weights_gib']:.2f} GiB, peak {row['peak_gib']:.2f} GiB "
                    f"(built in {row['build_s']:.0f} s)",
                    flush=True,
                )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\n{args.size}, batch {args.batch}, {device}, torch {torch.__version__}")
    print("| target | layout | s/step | weights GiB | peak GiB |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['target']} | {r['layout']} | {r['step_s']:.2f} | {r['weights_gib']:.2f} | "
            f"{r['peak_gib']:.2f} |"
        )
    if args.json is not None:
        meta = {"device": device, "torch": torch.__version__, "args": vars(args) | {"json": None}}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
