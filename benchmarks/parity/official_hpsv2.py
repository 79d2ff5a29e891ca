"""Official HPSv2 side of ``make parity``; runs in ``.venv-parity/hpsv2`` (the ``hpsv2`` package).

    python official_hpsv2.py FIXTURES [--seed 0]

Writes ``FIXTURES/hpsv2/``: a random-weight HPS model at the real architecture (open_clip
ViT-H-14 built by the package's own vendored open_clip, exactly as ``hpsv2.img_score`` builds
it but with ``pretrained=None``) saved as the official ``HPS_v2.1_compressed.pt``
(``{"state_dict": ...}``), the test images, a transformers CLIPTokenizer directory standing in
for ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (real CLIP BPE, pad ``"!"``), and the scores of
``hpsv2.img_score.score(images, prompt, cp=checkpoint)`` itself: its ``preprocess_val``
(ToTensor, then torchvision's float-tensor bicubic resize of the longest side to 224 and zero
padding, then CLIP normalisation), open_clip's tokenizer and the cosine of the two embeddings,
fp32 on CPU. ``initialize_model`` would download the laion weights, which the checkpoint
overwrites anyway; the model is put in its cache instead.

Random weights are perturbed (see ``perturb``) so that scores differ across images and prompts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common
import setup_env
import torch

CHECKPOINT = "HPS_v2.1_compressed.pt"


def perturb(model: torch.nn.Module, generator: torch.Generator) -> str:
    """Make a random-init model's scores depend on its inputs (see common.perturb_layer_norms)."""
    common.perturb_layer_norms(model, generator)
    with torch.no_grad():
        model.visual.conv1.weight.mul_(4.0)
    return f"open_clip random init (pretrained=None, seeded), then {common.PERTURBATION}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fixtures", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.fixtures / "hpsv2"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    from hpsv2 import img_score
    from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer

    started = time.time()
    # The arguments of hpsv2.img_score.initialize_model, but pretrained=None.
    model, _, preprocess_val = create_model_and_transforms(
        "ViT-H-14",
        None,
        precision="amp",
        device="cpu",
        jit=False,
        force_quick_gelu=False,
        force_custom_text=False,
        force_patch_dropout=False,
        force_image_size=None,
        pretrained_image=False,
        image_mean=None,
        image_std=None,
        light_augmentation=True,
        aug_cfg={},
        output_dict=True,
        with_score_predictor=False,
        with_region_predictor=False,
    )
    notes = perturb(model, generator)
    torch.save({"state_dict": model.state_dict()}, out / CHECKPOINT)
    print(f"hpsv2: model built and saved in {time.time() - started:.0f} s", flush=True)

    records = common.write_images(out)
    common.clip_tokenizer(setup_env.bpe_path(), pad_token="!").save_pretrained(out / "tokenizer")
    tokenize = get_tokenizer("ViT-H-14")
    # What preprocess_val gives, kept to tell a resize difference from a model difference.
    torch.save(
        {r["image"]: preprocess_val(common.load_image(out, r)) for r in records},
        out / "official_pixels.pt",
    )

    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)
    cases = []
    for prompt in common.PROMPTS:
        paths = [str(out / r["image"]) for r in records]
        scores = img_score.score(paths, prompt, cp=str(out / CHECKPOINT), hps_version="v2.1")
        ids = tokenize([prompt])[0]
        for record, score in zip(records, scores, strict=True):
            cases.append(
                {
                    **record,
                    "prompt": prompt,
                    "official_token_ids": ids[: int((ids == 49407).nonzero()[0]) + 1].tolist(),
                    "score": float(score),
                }
            )
        print(f"hpsv2: {len(cases)} cases scored ({time.time() - started:.0f} s)", flush=True)

    common.write_cases(
        out,
        "hpsv2",
        config={"model": CHECKPOINT, "version": "2.1", "tokenizer": "tokenizer"},
        cases=cases,
        official="hpsv2.img_score.score(image paths, prompt, cp=HPS_v2.1_compressed.pt), fp32, CPU",
        notes=notes + "; tokenizer dir: transformers CLIPTokenizer on the real CLIP BPE, pad '!'",
        env_packages=["torch", "torchvision", "transformers", "hpsv2", "open_clip_torch", "pillow"],
    )


if __name__ == "__main__":
    main()
