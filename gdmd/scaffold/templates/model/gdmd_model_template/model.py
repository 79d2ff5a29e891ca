"""The ``model-template`` model family: a small pixel-space flow-matching network.

Replace the network with your own. The contract (``gdmd.interfaces.DiffusionModel``): an
``nn.Module`` whose ``forward`` is ``predict_x0(x_t, t, cond, guidance_scale)``, returning
x0-predictions ``[B, *sample_shape]``; a noise schedule; a decoder to images in ``[0, 1]``;
prompts encoded to a dict of batch-first tensors; ``save_pretrained`` for checkpoints.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from gdmd.errors import GdmdError
from gdmd.schedules import FlowMatchingSchedule
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Prompt words kept; longer prompts are cut.
MAX_WORDS = 16


class ModelLoadError(GdmdError):
    """A saved model is missing or unreadable."""

    exit_code = 2


class PixelDecoder:
    """Pixels in ``[-1, 1]`` to images in ``[0, 1]``."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)


class ModelTemplateModel(nn.Module):
    """Velocity from ``x_t``, the time and a bag of hashed prompt words; ``forward`` returns
    the x0-prediction, with classifier-free guidance against the empty prompt."""

    def __init__(self, image_size: int, width: int, buckets: int) -> None:
        super().__init__()
        self.architecture = {"image_size": image_size, "width": width, "buckets": buckets}
        self.schedule = FlowMatchingSchedule()
        self.sample_shape: tuple[int, ...] = (3, image_size, image_size)
        self.decoder = PixelDecoder()
        # Bucket 0 is padding: the empty prompt embeds to zeros (the unconditional prompt).
        self.words = nn.EmbeddingBag(buckets + 1, width, mode="mean", padding_idx=0)
        self.time = nn.Linear(1, width)
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"words": LongTensor [B, MAX_WORDS]}``: each word hashed to a bucket, 0 pads."""
        buckets = self.architecture["buckets"]
        rows = []
        for prompt in prompts:
            ids = [zlib.crc32(word.encode()) % buckets + 1 for word in prompt.lower().split()]
            ids = ids[:MAX_WORDS]
            rows.append(ids + [0] * (MAX_WORDS - len(ids)))
        words = torch.tensor(rows, dtype=torch.long).reshape(len(prompts), MAX_WORDS)
        return {"words": words.to(self.inp.weight.device)}

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        embedding = self.words(words) + self.time(t.to(x_t.dtype)[:, None])
        hidden = nn.functional.silu(self.inp(x_t) + embedding[:, :, None, None])
        return self.out(hidden)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor],
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        x0 = self.schedule.to_x0(x_t, t, self.velocity(x_t, t, cond["words"]))
        if guidance_scale is None or guidance_scale == 1.0:
            return x0
        empty = torch.zeros_like(cond["words"])
        x0_uncond = self.schedule.to_x0(x_t, t, self.velocity(x_t, t, empty))
        return x0_uncond + guidance_scale * (x0 - x0_uncond)

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor],
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        # Through __call__, so hooks that wrap forward (accelerate's DDP) run.
        prediction: torch.Tensor = self(x_t, t, cond, guidance_scale)
        return prediction

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` (the architecture) and ``model.safetensors``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.architecture) + "\n")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ModelTemplateModel:
        """Load a model written by :meth:`save_pretrained`, on the CPU."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise ModelLoadError(
                f"model-template: {directory} has no {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(write them with save_pretrained)"
            )
        model = cls(**json.loads((directory / CONFIG_FILE).read_text()))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model
