"""Official CLIP-score and PickScore side of ``make parity``; runs in the main venv.

    python official_clip.py FIXTURES --reward clip|pickscore --bpe bpe_simple_vocab_16e6.txt.gz

Both official scorers are transformers code: PickScore's README scores with ``CLIPProcessor``
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) and ``CLIPModel`` (``yuvalkirstain/PickScore_v1``)
as ``logit_scale.exp() * cos(text, image)``; CLIP score (torchmetrics' convention) is
``100 * cos`` with ``openai/clip-vit-large-patch14``. Without torchvision, transformers 5's
``CLIPImageProcessor`` is its PIL backend (``CLIPImageProcessorPil``: PIL bicubic resize of the
shortest side on uint8, centre crop, rescale, normalise), the same path as transformers 4's
slow processor; this script checks that it is the one in use.

Writes ``FIXTURES/<reward>/``: a random ``CLIPModel`` at the real architecture saved with
``save_pretrained`` (CLIP: ViT-L/14, quick_gelu, as openai's config; PickScore: ViT-H/14, gelu,
as laion's), processor directories (tokenizer on the real CLIP BPE; pad ``<|endoftext|>`` for
openai, ``"!"`` for laion), the test images and the official scores. Text is tokenised with
``padding=True, truncation=True, max_length=77`` (PickScore's README; for CLIP this truncation
keeps the end-of-text token, where torchmetrics slices it off).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import common
import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

# Architectures of openai/clip-vit-large-patch14 and laion/CLIP-ViT-H-14-laion2B-s32B-b79K
# (which PickScore_v1 fine-tunes). Token ids as in those (legacy) hub configs: eos_token_id 2
# makes the text tower pool at argmax(input_ids), i.e. at <|endoftext|>.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "clip": {
        "projection_dim": 768,
        "logit_scale": 4.6052,
        "text": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
        ),
        "vision": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            hidden_act="quick_gelu",
        ),
        "pad_token": "<|endoftext|>",
    },
    "pickscore": {
        "projection_dim": 1024,
        # Not CLIP's initial ln(1/0.07): the score's logit_scale.exp() must come from the file.
        "logit_scale": 4.3,
        "text": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            hidden_act="gelu",
        ),
        "vision": dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            hidden_act="gelu",
        ),
        "pad_token": "!",
    },
}


def build_model(reward: str) -> Any:
    from transformers import CLIPConfig, CLIPModel

    arch = ARCHITECTURES[reward]
    config = CLIPConfig(
        text_config=dict(
            arch["text"],
            max_position_embeddings=77,
            vocab_size=49408,
            layer_norm_eps=1e-5,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            projection_dim=arch["projection_dim"],
        ),
        vision_config=dict(
            arch["vision"],
            image_size=224,
            patch_size=14,
            layer_norm_eps=1e-5,
            projection_dim=arch["projection_dim"],
        ),
        projection_dim=arch["projection_dim"],
        logit_scale_init_value=arch["logit_scale"],
    )
    return CLIPModel(config).eval()


def build_processor(reward: str, bpe: Path) -> Any:
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
        do_convert_rgb=True,
    )
    tokenizer = common.clip_tokenizer(bpe, pad_token=ARCHITECTURES[reward]["pad_token"])
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def perturb(model: Any, generator: torch.Generator) -> str:
    """Make a random-init model's scores depend on its inputs (see common.perturb_layer_norms)."""
    common.perturb_layer_norms(model, generator)
    with torch.no_grad():
        model.vision_model.embeddings.patch_embedding.weight.mul_(4.0)
    return f"transformers CLIPModel random init (seeded), then {common.PERTURBATION}"


def embeddings(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and a model output in 5."""
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return features / features.norm(dim=-1, keepdim=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fixtures", type=Path)
    parser.add_argument("--reward", choices=sorted(ARCHITECTURES), required=True)
    parser.add_argument("--bpe", type=Path, required=True, help="bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reward = args.reward
    out = args.fixtures / reward
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    started = time.time()
    model = build_model(reward)
    notes = perturb(model, generator)
    processor = build_processor(reward, args.bpe)
    # The hub layout: openai's repo holds model and processor; PickScore_v1 holds the model and
    # takes its processor from the laion repo.
    # Files as the hub repositories hold them: preprocessor_config.json and the tokenizer files
    # (transformers 5's CLIPProcessor.save_pretrained would merge them into processor_config.json).
    model.save_pretrained(out / "model")
    if reward == "clip":
        config: dict[str, Any] = {"model": "model"}
    else:
        config = {"model": "model", "processor": "processor"}
    processor.image_processor.save_pretrained(out / config.get("processor", "model"))
    processor.tokenizer.save_pretrained(out / config.get("processor", "model"))
    print(f"{reward}: model built and saved in {time.time() - started:.0f} s", flush=True)

    # Reload the processor as a user would, and check that it is the PIL path.
    from transformers import CLIPProcessor

    processor = CLIPProcessor.from_pretrained(out / config.get("processor", "model"))
    backend = type(processor.image_processor).__name__
    if not backend.endswith("Pil"):
        raise SystemExit(f"expected transformers' PIL image processor, got {backend}")

    records = common.write_images(out)
    images = [common.load_image(out, r) for r in records]
    prompts = list(common.PROMPTS)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        text = processor(
            text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        image_embs = embeddings(model.get_image_features(pixel_values=pixels))
        text_embs = embeddings(model.get_text_features(**text))
        scale = model.logit_scale.exp() if reward == "pickscore" else torch.tensor(100.0)
        scores = scale * text_embs @ image_embs.T  # [prompt, image]
    torch.save(
        {r["image"]: p for r, p in zip(records, pixels, strict=True)}, out / "official_pixels.pt"
    )

    cases = []
    for i, prompt in enumerate(prompts):
        ids = text["input_ids"][i][text["attention_mask"][i].bool()]
        for j, record in enumerate(records):
            cases.append(
                {
                    **record,
                    "prompt": prompt,
                    "official_token_ids": ids.tolist(),
                    "score": float(scores[i, j]),
                }
            )
    formula = "logit_scale.exp() * cos" if reward == "pickscore" else "100 * cos"
    common.write_cases(
        out,
        reward,
        config=config,
        cases=cases,
        official=f"transformers CLIPProcessor ({backend}) on PIL images + CLIPModel "
        f"get_image_features / get_text_features, {formula}, fp32, CPU",
        notes=notes,
        env_packages=["torch", "torchvision", "transformers", "pillow"],
    )
    print(f"{reward}: {len(cases)} cases scored ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
