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

#: Architecture used for a fresh model when the recipe leaves a field unset.
ARCHITECTURE_DEFAULTS: dict[str, Any] = {
    "image_size": 32,
    "channels": (48, 96, 128),
    "attention_levels": (-2, -1),
    "text_width": 64,
    "text_layers": 2,
    "heads": 4,
    "vocabulary": list(DEFAULT_VOCABULARY),
    "max_tokens": 16,
}


class TinyUNetConfig(ComponentConfig):
    """Options of the ``tiny-unet`` model family.

    Architecture fields left unset take the saved model's values when ``model`` is set (or
    the ``init_from`` model's), else the defaults in :data:`ARCHITECTURE_DEFAULTS`.
    """

    model: str | None = Field(
        default=None,
        description="Directory written by save_pretrained to load the architecture and weights "
        "from; unset: random initialisation (or a copy of init_from).",
    )
    image_size: int | None = Field(
        default=None, ge=2, description="Side of the square RGB images, in pixels (default 32)."
    )
    channels: tuple[Annotated[int, Field(ge=4)], ...] | None = Field(
        default=None,
        min_length=1,
        description="U-Net channels per level; level 0 runs at image_size/2 (after a 2x2 "
        "pixel-unshuffle), each further level at half the previous resolution.",
    )
    attention_levels: tuple[int, ...] | None = Field(
        default=None,
        description="U-Net levels with self- and cross-attention, as indices into channels "
        "(negative counts from the lowest resolution). The middle block always has both.",
    )
    text_width: int | None = Field(
        default=None, ge=8, description="Width of the text encoder (default 64)."
    )
    text_layers: int | None = Field(
        default=None, ge=1, description="Transformer layers of the text encoder (default 2)."
    )
    heads: int | None = Field(
        default=None, ge=1, description="Attention heads, text encoder and U-Net (default 4)."
    )
    vocabulary: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Known lowercase words; any other word becomes [UNK].",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=512, description="Prompt length in words; longer prompts are cut."
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
    def _check_vocabulary(cls, words: list[str] | None) -> list[str] | None:
        if words is None:
            return None
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
        if self.model is not None:
            # The saved model's architecture decides; fields set here are compared with it
            # when it is loaded.
            return self
        full = self.filled()
        full._check_filled()
        return self

    def _check_filled(self) -> None:
        assert self.channels is not None and self.image_size is not None
        assert self.attention_levels is not None
        assert self.text_width is not None and self.heads is not None
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

    def filled(self) -> TinyUNetConfig:
        """This config with every unset architecture field at the family default."""
        update = {k: v for k, v in ARCHITECTURE_DEFAULTS.items() if getattr(self, k) is None}
        return self.model_copy(update=update)

    def resolved_attention_levels(self) -> frozenset[int]:
        """``attention_levels`` (defaults filled in) as non-negative level indices."""
        full = self.filled()
        assert full.channels is not None and full.attention_levels is not None
        return frozenset(i % len(full.channels) for i in full.attention_levels)

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the network, defaults filled in and attention levels resolved."""
        full = self.filled()
        arch = {name: getattr(full, name) for name in ARCHITECTURE_FIELDS}
        arch["attention_levels"] = sorted(self.resolved_attention_levels())
        arch["channels"] = list(full.channels or ())
        return arch
