"""Names every module of the ``sd3`` family uses: errors, roles, file names, type aliases."""

from __future__ import annotations

import re
from typing import Any

import torch

from gdmd.errors import GdmdError

#: A diffusers ``SD3Transformer2DModel`` and ``StableDiffusion3Pipeline``. Spelled ``Any``:
#: diffusers' lazy module hides its classes from type checkers, and importing diffusers at
#: module level would cost seconds.
SD3Transformer2DModel = Any
StableDiffusion3Pipeline = Any

#: Marker file of a directory written by :meth:`SD3Model.save_pretrained`.
SAVE_METADATA = "gdmd_sd3.json"
EXPORT_METADATA = "gdmd_export.json"

ROLES = ("teacher", "student", "critic")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFFLINE_HINT = (
    "If you are offline, set HF_HUB_OFFLINE=1 (so no lookup is attempted) and point `model` at "
    "a local directory holding a diffusers StableDiffusion3Pipeline (model_index.json, "
    "transformer/, vae/, text_encoder*/, tokenizer*/, scheduler/), or at a model already in the "
    "Hugging Face cache."
)


class SD3LoadError(GdmdError):
    """An SD3 pipeline or a saved gdmd SD3 model could not be found or read."""

    exit_code = 2


class SD3ConfigError(GdmdError):
    """An ``sd3`` component's options do not fit the role or the model they are used with."""

    exit_code = 2



class SD3ExportError(GdmdError):
    """An sd3 model cannot be exported in the format asked for."""

    exit_code = 2
