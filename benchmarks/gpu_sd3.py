"""The SD3 GPU check: real-size step time and memory, then every family end to end on CUDA.

    python benchmarks/gpu_sd3.py --json gpu_sd3.json        # one H100 (80 GB), about 8 min
    python benchmarks/gpu_sd3.py --quick --json quick.json  # CPU smoke run at toy sizes

Nothing is downloaded. Part 1, **end to end at tiny size** (on CUDA; on the CPU with
``--quick``), through the real command line: for ``sd3``, ``gdmd run`` (3 updates) ->
``gdmd sample`` -> ``gdmd export --format lora`` -> diffusers' ``load_lora_weights`` on the
base pipeline, which draws the prompt ``gdmd sample`` drew; for the ``sdxl`` and ``flux2``
plugin families, ``gdmd run`` -> ``gdmd export --format lora`` -> ``load_lora_weights``. The
tiny pipelines are the ones their tests build.

Part 2, **step time and peak reserved memory at real size**: random weights in bfloat16 of
SD3-Medium's transformer (2.03B parameters, 24 joint blocks) and the SD3 VAE (16 latent
channels), configs written out below; 256 T5 tokens per prompt. The text encoders keep
their real widths (CLIP-L 768, CLIP-G 1280, T5-XXL 4096) but have ONE layer each instead of
12, 32 and 24 (about 10 GB less in bfloat16; they run once per prompt batch without grad, so
only their own weights and time differ). Two rewards, each a random CLIP ViT-H/14 (the size
of both shipped rewards, HPSv2 and PickScore: 1280-wide 32-layer vision tower, 1024-wide
24-layer text tower), built as ``clip`` rewards. The matrix: targets ``dmd``, ``gdmd``
(K = 4, ``vary = "both"``) unchunked and with ``chunk_size`` = batch, and ``dmdr``
(back-propagating through the VAE and both rewards); layouts ``share_base`` true and false;
batch 2; 512 then 1024 px; LoRA rank 64 / 32, gradient checkpointing, bf16 autocast, 2
critic updates per student update (``--critic-steps``; the recipe's 5 would not fit the time
budget), 1 warm-up and 2 timed student updates. Reported per cell: median step time,
``torch.cuda.max_memory_reserved`` (what the allocator held at its peak, the number that
decides out-of-memory) and ``max_memory_allocated``. A cell that runs out of memory is
recorded as ``oom``; cells not started within ``--budget-s`` as ``skipped``.

The JSON is rewritten after every measurement, so a run cut short still reports what it
did. Results go to docs/benchmarks.md ("SD3 on a GPU").
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; never wait on DNS

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: Transformer, VAE, text encoder and reward shapes. "medium" is SD3-Medium's transformer
#: and VAE config; "tiny" is a toy of the same structure for --quick.
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
        "t5_tokens": 256,
        "reward_vision": dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        "reward_text": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24),
        "resolutions": (512, 1024),
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
        "t5_tokens": 8,
        "reward_vision": dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        "reward_text": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1),
        "resolutions": (16, 32),
        "lora": (4, 2),
        "dtype": "float32",
    },
}

TARGETS = {
    "dmd": 'kind = "dmd"',
    "gdmd": 'kind = "gdmd"\nk = 4\nvary = "both"',
    "gdmd-chunked": 'kind = "gdmd"\nk = 4\nvary = "both"\nchunk_size = {batch}',
    "dmdr": 'kind = "dmdr"',
}
LAYOUTS = {"shared": True, "copied": False}
REWARDS = ("hps_sized", "pick_sized")
FAMILIES = ("sd3", "sdxl", "flux2")


class Report:
    """The JSON report, rewritten whole after every change."""

    def __init__(self, path: Path | None, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"meta": meta, "end_to_end": {}, "matrix": []}

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            tmp.replace(self.path)


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


def _t5_tokenizer(tokens: int) -> Any:
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{c}", -2.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=tokens)


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
    t5_tokenizer = _t5_tokenizer(size["t5_tokens"])
    # Random init of 2B parameters is minutes on a CPU and seconds on the GPU.
    where = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.random.fork_rng(devices=[]), where:
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
    where = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.random.fork_rng(devices=[]), where:
        torch.manual_seed(1)
        CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


# -- part 2: one cell of the matrix ------------------------------------------------------------


def recipe_text(
    root: Path, size: dict[str, Any], target: str, shared: bool, resolution: int, args: Any
) -> str:
    student_rank, critic_rank = size["lora"]
    model = (
        f'kind = "sd3"\ndtype = "{size["dtype"]}"\nmax_sequence_length = {size["t5_tokens"]}\n'
        f"gradient_checkpointing = true"
    )
    share = str(shared).lower()
    mixed = "bf16" if size["dtype"] == "bfloat16" and torch.cuda.is_available() else "no"
    rewards = "".join(
        f'\n[reward.{label}]\nkind = "clip"\nmodel = "{root / "reward"}"\n'
        f'dtype = "{size["dtype"]}"\nnormalise = "group"\n'
        for label in REWARDS
    )
    return f"""
[run]
name = "bench"
seed = 0
output_dir = "{root / "runs"}"

[teacher]
{model}
model = "{root / "pipeline"}"
guidance_scale = 7.0
resolution = {resolution}

[student]
{model}
init_from = "teacher"
steps = 4
timesteps = [1.0, 0.9, 0.75, 0.5]
lora_rank = {student_rank}
share_base = {share}

[critic]
{model}
init_from = "teacher"
lora_rank = {critic_rank}
share_base = {share}
{rewards}
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


def measure(
    root: Path, size: dict[str, Any], target: str, layout: str, resolution: int, args: Any
) -> dict[str, Any]:
    import shutil

    from gdmd.manager import build_plugin_manager
    from gdmd.recipe import load_recipe
    from gdmd.run.build import build_components, loop_settings, make_accelerator
    from gdmd.train.loop import train

    shutil.rmtree(root / "runs", ignore_errors=True)
    path = root / f"{target}-{layout}-{resolution}.toml"
    path.write_text(recipe_text(root, size, target, LAYOUTS[layout], resolution, args))
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
    times = [m["step_time"] for m in result.metrics][args.warmup :]
    row = {
        "step_s": statistics.median(times),
        "step_s_all": times,
        "build_s": build_s,
        "weights_gib": weights / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0,
        "peak_allocated_gib": (torch.cuda.max_memory_allocated() - before) / 2**30 if cuda else 0.0,
    }
    del parts, result, accelerator
    return row


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- part 1: each family end to end through the command line, at tiny size -------------------


def _load_module(name: str, path: Path) -> Any:
    """A test helper module by file path (the tests' tiny-pipeline builders)."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_recipe(family: str, pipeline: Path, out: Path, steps: int) -> str:
    model = {
        "sd3": 'kind = "sd3"\nmax_sequence_length = 16',
        "sdxl": 'kind = "sdxl"',
        "flux2": 'kind = "flux2"\nmax_sequence_length = 48',
    }[family]
    teacher_extra = "resolution = 16\n" if family == "flux2" else ""
    times = "timesteps = [1.0, 0.9, 0.75, 0.5]\n" if family == "sd3" else ""
    student_model = model if family != "sdxl" else ""
    return f"""
[run]
name = "tiny-{family}"
seed = 3
output_dir = "{out}"

[teacher]
{model}
model = "{pipeline}"
{teacher_extra}guidance_scale = 2.0

[student]
{student_model}
init_from = "teacher"
steps = {4 if family == "sd3" else 2}
{times}lora_rank = 4
lora_alpha = 8.0

[critic]
{student_model}
init_from = "teacher"
lora_rank = 2

[reward.red]
kind = "channel"
channel = "red"

[target]
kind = "gdmd"
k = 2
vary = "both"

[prompts]
kind = "list"
prompts = ["a red cat", "two blue dogs", "a cat"]

[train]
steps = {steps}
batch_size = 2
critic_steps = 1
student_lr = 1e-2
critic_lr = 1e-2

[log]
trackers = ["jsonl"]
"""


def _save_tiny(family: str, directory: Path) -> Path:
    if family == "sd3":
        builder = _load_module("gdmd_tiny_sd3", ROOT / "tests" / "models" / "conftest.py")
        return Path(builder.save_tiny_sd3_pipeline(directory))
    if family == "sdxl":
        kit = ROOT / "plugins" / "gdmd-sdxl" / "tests" / "sdxl_testkit.py"
        return Path(_load_module("sdxl_testkit", kit).save_tiny_sdxl_pipeline(directory))
    kit = ROOT / "plugins" / "gdmd-flux2" / "tests" / "flux2_tiny.py"
    return Path(_load_module("flux2_tiny", kit).save_tiny_flux2_pipeline(directory))


def _gdmd(*args: str) -> None:
    from typer.testing import CliRunner

    from gdmd.cli import make_app

    result = CliRunner().invoke(make_app(), list(args))
    if result.exit_code != 0:
        raise RuntimeError(f"gdmd {' '.join(args)} exited {result.exit_code}: {result.output}")


def end_to_end(family: str, root: Path, device: str) -> dict[str, Any]:
    """run -> (sample) -> export --format lora -> diffusers load_lora_weights, for one family."""
    from importlib.metadata import entry_points

    if family != "sd3" and not any(ep.name == family for ep in entry_points(group="gdmd")):
        return {"status": f"skipped: the gdmd-{family} plugin is not installed"}
    start = time.perf_counter()
    pipeline = _save_tiny(family, root / f"{family}-pipeline")
    recipe = root / f"{family}.toml"
    recipe.write_text(_tiny_recipe(family, pipeline, root / "runs", steps=3))
    run = root / "runs" / f"tiny-{family}"
    _gdmd("run", str(recipe))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    out = root / f"{family}-lora"
    row: dict[str, Any] = {"updates": max(steps)}
    if family == "sd3":
        prompts = root / "fox.txt"
        prompts.write_text("a red cat\n")
        _gdmd("sample", str(run), "--prompts-file", str(prompts), "--out", str(root / "fox"),
              "--device", device)  # fmt: skip
    _gdmd("export", str(run), str(out), "--format", "lora")
    row.update(_load_in_diffusers(family, pipeline, out, root, device))
    row["seconds"] = time.perf_counter() - start
    row["status"] = "ok"
    return row


def _load_in_diffusers(
    family: str, pipeline: Path, lora: Path, root: Path, device: str
) -> dict[str, Any]:
    import numpy as np
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
    from PIL import Image

    pipe: Any = DiffusionPipeline.from_pretrained(pipeline)
    pipe.load_lora_weights(lora)
    denoiser = pipe.unet if family == "sdxl" else pipe.transformer
    adapted = sum(1 for name, _ in denoiser.named_parameters() if "lora_A" in name)
    row: dict[str, Any] = {"diffusers_lora_modules": adapted}
    if adapted == 0:
        raise RuntimeError(f"{family}: load_lora_weights loaded no LoRA module from {lora}")
    if family != "sd3":
        return row
    # The model card's recipe: the student's scheduler and times, gdmd sample's seeds.
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(lora, subfolder="scheduler")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0 * 7919 + 1)
    image = pipe(
        "a red cat",
        sigmas=[1.0, 0.9, 0.75, 0.5],
        guidance_scale=1.0,
        max_sequence_length=16,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    drawn = np.asarray(image, dtype=np.int16)
    sampled = np.asarray(Image.open(root / "fox" / "00000.png"), dtype=np.int16)
    # Exact to 1/255 on the CPU; on a GPU the re-noising draws differ from the second step on.
    row["max_abs_diff_vs_gdmd_sample_255"] = int(np.abs(drawn - sampled).max())
    return row


# -- the command -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes on the CPU (a smoke run)")
    parser.add_argument("--json", type=Path, help="the report, rewritten after each measurement")
    parser.add_argument("--batch", type=int, default=2, help="prompts per student update")
    parser.add_argument("--steps", type=int, default=2, help="timed student updates")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first updates")
    parser.add_argument("--critic-steps", type=int, default=2)
    parser.add_argument(
        "--budget-s", type=float, default=380.0,
        help="start no matrix cell after this many seconds from the start (default 380)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not args.quick and not cuda:
        print("the real-size check needs a CUDA GPU; --quick runs toy sizes on the CPU",
              file=sys.stderr)  # fmt: skip
        return 2
    size = SIZES["tiny" if args.quick else "medium"]
    device = "cuda" if cuda else "cpu"
    started = time.perf_counter()
    report = Report(
        args.json,
        {
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__,
            "size": "tiny" if args.quick else "medium",
            "t5_tokens": size["t5_tokens"],
            "text_encoder_layers": "1 each (real: CLIP-L 12, CLIP-G 32, T5-XXL 24)",
            "rewards": list(REWARDS),
            "args": {k: str(v) for k, v in vars(args).items()},
        },
    )
    report.save()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="gdmd-gpu-sd3-") as tmp:
        root = Path(tmp)
        for family in FAMILIES:
            try:
                row = end_to_end(family, root / "e2e", device)
            except Exception as exc:  # a failure is a finding: record it, go on
                failures += 1
                row = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                       "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
            report.data["end_to_end"][family] = row
            report.save()
            print(f"end to end {family}: {row['status']}", flush=True)
            _free()

        start = time.perf_counter()
        save_pipeline(root / "pipeline", size)
        save_reward(root / "reward", size)
        report.data["meta"]["models_built_s"] = time.perf_counter() - start
        for resolution in size["resolutions"]:
            for layout in LAYOUTS:
                for target in TARGETS:
                    cell: dict[str, Any] = {
                        "target": target, "layout": layout, "resolution": resolution,
                        "batch": args.batch,
                    }  # fmt: skip
                    if time.perf_counter() - started > args.budget_s:
                        cell["status"] = "skipped: time budget"
                    else:
                        try:
                            cell.update(measure(root, size, target, layout, resolution, args))
                            cell["status"] = "ok"
                        except torch.cuda.OutOfMemoryError as exc:
                            cell.update(status="oom", error=str(exc).splitlines()[0])
                        except Exception as exc:
                            failures += 1
                            error = f"{type(exc).__name__}: {exc}"[:2000]
                            cell.update(status="failed", error=error)
                    _free()
                    report.data["matrix"].append(cell)
                    report.save()
                    print(
                        f"{resolution:>5} px {target:>13} {layout:>6}: {cell['status']}"
                        + (
                            f", {cell['step_s']:.2f} s/step, peak reserved "
                            f"{cell['peak_reserved_gib']:.2f} GiB"
                            if cell["status"] == "ok"
                            else ""
                        ),
                        flush=True,
                    )
    report.data["meta"]["total_s"] = time.perf_counter() - started
    report.save()
    print(f"\n{report.data['meta']['device']}, torch {torch.__version__}, batch {args.batch}")
    print("| px | target | layout | s/step | peak reserved GiB | peak allocated GiB |")
    print("|---:|---|---|---:|---:|---:|")
    for c in report.data["matrix"]:
        if c["status"] == "ok":
            print(f"| {c['resolution']} | {c['target']} | {c['layout']} | {c['step_s']:.2f} | "
                  f"{c['peak_reserved_gib']:.2f} | {c['peak_allocated_gib']:.2f} |")  # fmt: skip
        else:
            print(f"| {c['resolution']} | {c['target']} | {c['layout']} | {c['status']} | | |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
