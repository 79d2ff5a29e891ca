"""Names every module of the ``sdxl`` family uses: errors, roles, file names, references."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gdmd.errors import GdmdError

#: A diffusers ``UNet2DConditionModel`` / ``StableDiffusionXLPipeline``. Spelled ``Any``:
#: importing diffusers at module level would cost seconds.
UNet = Any
SDXLPipeline = Any

#: Marker file of a directory written by :meth:`SDXLModel.save_pretrained`.
SAVE_METADATA = "gdmd_sdxl.json"
#: Notes an export writes beside its files.
EXPORT_METADATA = "gdmd_export.json"
#: diffusers' LoRA file name (what ``load_lora_weights(folder)`` looks for).
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"

ROLES = ("teacher", "student", "critic")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
OFFLINE_HINT = (
    "If you are offline, set HF_HUB_OFFLINE=1 (so no lookup is attempted) and point `model` at "
    "a local directory holding a diffusers StableDiffusionXLPipeline (model_index.json, unet/, "
    "vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/), or at a model "
    "already in the Hugging Face cache."
)


class SDXLLoadError(GdmdError):
    """An SDXL pipeline, VAE or a saved gdmd SDXL model could not be found or read."""

    exit_code = 2


class SDXLConfigError(GdmdError):
    """An ``sdxl`` component's options do not fit the role or the model they are used with."""

    exit_code = 2


class SDXLExportError(GdmdError):
    """An ``sdxl`` model cannot be exported in the format asked for."""

    exit_code = 2


@dataclass(frozen=True)
class ModelRef:
    """Where a set of weights can be loaded from: hub id or absolute local path."""

    model: str
    revision: str | None = None
    variant: str | None = None
    subfolder: str | None = None
