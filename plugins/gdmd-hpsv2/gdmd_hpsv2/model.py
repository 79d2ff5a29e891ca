"""HPSv2 on transformers' CLIP: the official open_clip checkpoint, converted key by key.

HPSv2 (Wu et al., 2023, "Human Preference Score v2") is an open_clip ViT-H-14 fine-tuned on
human preference pairs. Its score is the cosine of the L2-normalised image and text
embeddings (no logit scale). The official scorer (``hpsv2/img_score.py``) reads
``torch.load(file)["state_dict"]`` into open_clip strictly, preprocesses with open_clip's
evaluation transform for ``light_augmentation`` (longest side to 224, zero padding to a
square, OpenAI's mean and std) and tokenises with open_clip's CLIP BPE.

Here the same weights load into a ``transformers.CLIPModel`` (open_clip keeps OpenAI CLIP's
module names, so the mapping is the one transformers' own OpenAI-CLIP conversion uses: fused
``in_proj`` split into q, k, v; the two projections transposed). The architecture is read from
the checkpoint's shapes, so the same code loads the real ViT-H-14 and a tiny test model.
Nothing of open_clip or torchvision is needed.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gdmd.interfaces import BuildContext
from gdmd.rewards.clip import CLIPScorer, load_tokenizer
from gdmd.rewards.loading import (
    RewardLoadError,
    check_keys,
    count_blocks,
    load_checkpoint,
    load_strictly,
    torch_dtype,
)
from gdmd.rewards.preprocess import ResizeLongestPadNormalize
from gdmd_hpsv2.config import CHECKPOINTS, HUB_REPO, HPSv2Config

__all__ = ["Architecture", "build_hpsv2", "convert_state_dict", "open_clip_keys"]

WHO = "reward 'hpsv2'"
_WHAT = (
    "the official checkpoint file (HPS_v2.1_compressed.pt or HPS_v2_compressed.pt, from the "
    f"hub repository {HUB_REPO}) or a directory holding it"
)
#: Per-block tensors of open_clip's ``ResidualAttentionBlock``.
_BLOCK = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)
#: Tensors the architecture is read from.
_SHAPE_KEYS = (
    "visual.conv1.weight",
    "visual.positional_embedding",
    "visual.proj",
    "visual.transformer.resblocks.0.mlp.c_fc.weight",
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
    "transformer.resblocks.0.mlp.c_fc.weight",
)


@dataclass(frozen=True)
class Architecture:
    """The shape of an open_clip CLIP, as read from its state dict."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_mlp: int
    vision_heads: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_mlp: int
    text_heads: int

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], vision_heads: int, text_heads: int, where: Any
    ) -> Architecture:
        missing = [k for k in _SHAPE_KEYS if k not in state]
        if missing:
            raise RewardLoadError(
                f"{WHO}: the checkpoint {where} is not an open_clip CLIP state dict (as HPSv2's "
                f"official checkpoints are): missing key(s) {', '.join(missing)}"
            )
        conv = state["visual.conv1.weight"]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        arch = cls(
            embed_dim=int(state["visual.proj"].shape[1]),
            image_size=int(grid * conv.shape[-1]),
            patch_size=int(conv.shape[-1]),
            vision_width=int(conv.shape[0]),
            vision_layers=count_blocks(state, "visual.transformer.resblocks."),
            vision_mlp=int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            vision_heads=vision_heads,
            context_length=int(state["positional_embedding"].shape[0]),
            vocab_size=int(state["token_embedding.weight"].shape[0]),
            text_width=int(state["token_embedding.weight"].shape[1]),
            text_layers=count_blocks(state, "transformer.resblocks."),
            text_mlp=int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            text_heads=text_heads,
        )
        for tower, width, heads, key in (
            ("image", arch.vision_width, vision_heads, "vision_heads"),
            ("text", arch.text_width, text_heads, "text_heads"),
        ):
            if width % heads:
                raise RewardLoadError(
                    f"{WHO}: {key} = {heads} does not divide the {tower} tower's width {width}"
                )
        return arch

    def clip_config(self) -> Any:
        """The ``transformers.CLIPConfig`` of the same network."""
        from transformers import CLIPConfig

        # eos_token_id = 2 selects transformers' legacy pooling, argmax over the token ids:
        # exactly open_clip's `text.argmax(-1)` (the end-of-text token has the largest id).
        text = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.text_width,
            intermediate_size=self.text_mlp,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=self.context_length,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            projection_dim=self.embed_dim,
            eos_token_id=2,
        )
        vision = dict(
            hidden_size=self.vision_width,
            intermediate_size=self.vision_mlp,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            projection_dim=self.embed_dim,
        )
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.embed_dim)


def open_clip_keys(arch: Architecture) -> list[str]:
    """Every tensor an open_clip CLIP of this architecture has in its state dict."""
    keys = [
        "logit_scale",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.proj",
        "visual.conv1.weight",
        "visual.ln_pre.weight",
        "visual.ln_pre.bias",
        "visual.ln_post.weight",
        "visual.ln_post.bias",
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
        "ln_final.weight",
        "ln_final.bias",
    ]
    for prefix, layers in (
        ("visual.transformer.resblocks", arch.vision_layers),
        ("transformer.resblocks", arch.text_layers),
    ):
        keys += [f"{prefix}.{i}.{name}" for i in range(layers) for name in _BLOCK]
    return keys


def _convert_block(state: Mapping[str, torch.Tensor], src: str, dst: str) -> dict[str, Any]:
    q, k, v = state[f"{src}.attn.in_proj_weight"].chunk(3, dim=0)
    qb, kb, vb = state[f"{src}.attn.in_proj_bias"].chunk(3, dim=0)
    return {
        f"{dst}.layer_norm1.weight": state[f"{src}.ln_1.weight"],
        f"{dst}.layer_norm1.bias": state[f"{src}.ln_1.bias"],
        f"{dst}.self_attn.q_proj.weight": q,
        f"{dst}.self_attn.k_proj.weight": k,
        f"{dst}.self_attn.v_proj.weight": v,
        f"{dst}.self_attn.q_proj.bias": qb,
        f"{dst}.self_attn.k_proj.bias": kb,
        f"{dst}.self_attn.v_proj.bias": vb,
        f"{dst}.self_attn.out_proj.weight": state[f"{src}.attn.out_proj.weight"],
        f"{dst}.self_attn.out_proj.bias": state[f"{src}.attn.out_proj.bias"],
        f"{dst}.layer_norm2.weight": state[f"{src}.ln_2.weight"],
        f"{dst}.layer_norm2.bias": state[f"{src}.ln_2.bias"],
        f"{dst}.mlp.fc1.weight": state[f"{src}.mlp.c_fc.weight"],
        f"{dst}.mlp.fc1.bias": state[f"{src}.mlp.c_fc.bias"],
        f"{dst}.mlp.fc2.weight": state[f"{src}.mlp.c_proj.weight"],
        f"{dst}.mlp.fc2.bias": state[f"{src}.mlp.c_proj.bias"],
    }


def convert_state_dict(state: Mapping[str, torch.Tensor], arch: Architecture) -> dict[str, Any]:
    """open_clip CLIP keys -> ``transformers.CLIPModel`` keys (the state must be complete)."""
    out: dict[str, Any] = {
        "logit_scale": state["logit_scale"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        # transformers' spelling of the pre-norm ("layrnorm") is the real attribute name.
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
    }
    for i in range(arch.vision_layers):
        src, dst = f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}"
        out.update(_convert_block(state, src, dst))
    for i in range(arch.text_layers):
        src, dst = f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}"
        out.update(_convert_block(state, src, dst))
    return out


def _open_clip_tokenizer(tokenizer: Any) -> Any:
    """A CLIP tokenizer that splits text exactly as open_clip's ``tokenize`` does.

    The laion repositories' tokenizer uses ``"!"`` as its padding token, so transformers
    treats every ``"!"`` of a prompt as that special token (id 0) while open_clip encodes it
    as the word ``"!</w>"``. Rebuilding the tokenizer from the same vocabulary and merges with
    ``<|endoftext|>`` as padding removes the difference; the padding ids themselves do not
    matter, since the causal text tower pools at the end-of-text token.
    """
    import json

    from transformers import CLIPTokenizer

    if tokenizer.pad_token != "!":
        return tokenizer
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(
        vocab=model["vocab"],
        merges=merges,
        model_max_length=tokenizer.model_max_length,
        pad_token="<|endoftext|>",
    )


def _tokenize(tokenizer: Any, context_length: int) -> Any:
    def tokenize(prompts: list[str]) -> dict[str, torch.Tensor]:
        # open_clip unescapes HTML twice before its BPE (its ftfy step is not repeated here:
        # it changes only mis-encoded text).
        cleaned = [html.unescape(html.unescape(p)).strip() for p in prompts]
        tokens = tokenizer(
            cleaned,
            padding="max_length",
            truncation=True,
            max_length=context_length,
            return_tensors="pt",
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    return tokenize


def build_hpsv2(config: HPSv2Config, ctx: BuildContext) -> CLIPScorer:
    """The ``hpsv2`` reward: ``cos(image, text)`` of the official HPS checkpoint."""
    from transformers import CLIPModel

    filename = CHECKPOINTS[config.version]
    path, state = load_checkpoint(
        config.model or HUB_REPO, filename, who=WHO, revision=config.revision, what=_WHAT
    )
    arch = Architecture.from_state_dict(state, config.vision_heads, config.text_heads, path)
    check_keys(state, open_clip_keys(arch), who=WHO, where=path)
    model = CLIPModel(arch.clip_config())
    load_strictly(model, convert_state_dict(state, arch), who=WHO, where=path)
    del state
    model = model.to(device=ctx.device, dtype=torch_dtype(config.dtype))
    tokenizer = _open_clip_tokenizer(
        load_tokenizer(config.tokenizer, who=WHO, key="tokenizer", revision=None)
    )
    return CLIPScorer(
        "hpsv2",
        model,
        _tokenize(tokenizer, arch.context_length),
        ResizeLongestPadNormalize(arch.image_size),
        1.0,
        batch_size=config.batch_size,
    )
