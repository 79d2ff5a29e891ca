"""Config of the ``tiny-unet`` model family, importable without torch (plugins register it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from gdmd.config import ComponentConfig

#: Words of the toy shapes domain (colours, shapes, counts, relations) and common fillers.
DEFAULT_VOCABULARY: tuple[str, ...] = (
    # articles, counts and fillers
    "a", "an", "one", "two", "three", "four", "five", "the", "and", "of", "with", "is", "are",
    "on", "in", "to", "next", "top", "image", "picture", "photo",
    # colours
    "red", "green", "blue", "yellow", "purple", "orange", "cyan", "magenta", "pink", "white",
    "black", "gray", "grey", "brown",
    # shapes, singular and plural
    "circle", "circles", "square", "squares", "triangle", "triangles", "star", "stars",
    "diamond", "diamonds", "rectangle", "rectangles", "cross", "crosses", "shape", "shapes",
    # relative position and size
    "left", "right", "above", "below", "under", "over", "beside", "small", "big", "large",
)  # fmt: skip

#: Config fields that fix the network's architecture (the rest are runtime options).
ARCHITECTURE_FIELDS = (
    "image_size",
    "channels",
    "attention_levels",
    "text_width",
    "text_layers",
    "heads",
    "vocabulary",
    "max_tokens",
)


class TinyUNetConfig(ComponentConfig):
    """Options of the ``tiny-unet`` model family."""

    model: str | None = Field(
        default=None,
        description="Directory written by save_pretrained to load the architecture and weights "
        "from; unset: random initialisation (or a copy of init_from).",
    )
    image_size: int = Field(
        default=32, ge=2, description="Side of the square RGB images, in pixels."
    )
    channels: tuple[Annotated[int, Field(ge=4)], ...] = Field(
        default=(48, 96, 128),
        min_length=1,
        description="U-Net channels per level; level 0 runs at image_size/2 (after a 2x2 "
        "pixel-unshuffle), each further level at half the previous resolution.",
    )
    attention_levels: tuple[int, ...] = Field(
        default=(-2, -1),
        description="U-Net levels with self- and cross-attention, as indices into channels "
        "(negative counts from the lowest resolution). The middle block always has both.",
    )
    text_width: int = Field(default=64, ge=8, description="Width of the text encoder.")
    text_layers: int = Field(default=2, ge=1, description="Transformer layers of the text encoder.")
    heads: int = Field(default=4, ge=1, description="Attention heads (text encoder and U-Net).")
    vocabulary: list[str] = Field(
        default_factory=lambda: list(DEFAULT_VOCABULARY),
        min_length=1,
        description="Known lowercase words; any other word becomes [UNK].",
    )
    max_tokens: int = Field(
        default=16, ge=1, le=512, description="Prompt length in words; longer prompts are cut."
    )
    prompt_dropout: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Probability of replacing a prompt by the empty prompt during flow-matching "
        "pretraining (teaches the unconditional branch of classifier-free guidance).",
    )
    trainable: Literal["all"] = Field(default="all", description="Which parameters train.")

    @field_validator("vocabulary")
    @classmethod
    def _check_vocabulary(cls, words: list[str]) -> list[str]:
        bad = [w for w in words if not (w.isalpha() and w == w.lower())]
        if bad:
            raise ValueError(
                f"vocabulary words must be lowercase letters only (prompts are split on "
                f"non-letters), got {bad[:5]}"
            )
        duplicates = sorted({w for w in words if words.count(w) > 1})
        if duplicates:
            raise ValueError(f"vocabulary has duplicate words: {duplicates[:5]}")
        return words

    @model_validator(mode="after")
    def _check_shapes(self) -> TinyUNetConfig:
        levels = len(self.channels)
        factor = 2**levels
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**len(channels) = {factor} "
                f"(a 2x2 pixel-unshuffle, then {levels - 1} halvings)"
            )
        out_of_range = [i for i in self.attention_levels if not -levels <= i < levels]
        if out_of_range:
            raise ValueError(
                f"attention_levels {list(out_of_range)} out of range for {levels} level(s) "
                f"(valid: {-levels} .. {levels - 1})"
            )
        if len(self.resolved_attention_levels()) != len(self.attention_levels):
            raise ValueError(f"attention_levels {list(self.attention_levels)} repeat a level")
        if self.text_width % self.heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by heads {self.heads}")
        attended = sorted({*self.resolved_attention_levels(), levels - 1})
        for level in attended:
            if self.channels[level] % self.heads:
                raise ValueError(
                    f"channels[{level}] = {self.channels[level]} has attention and is not "
                    f"divisible by heads {self.heads}"
                )
        return self

    def resolved_attention_levels(self) -> frozenset[int]:
        """``attention_levels`` as non-negative level indices."""
        return frozenset(i % len(self.channels) for i in self.attention_levels)

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the network, with attention levels resolved (for comparison)."""
        arch = {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}
        arch["attention_levels"] = sorted(self.resolved_attention_levels())
        arch["channels"] = list(self.channels)
        return arch
