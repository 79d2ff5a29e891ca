"""Loading weights by hub id or local directory: what model families and rewards share.

Part of the public API for plugin authors (docs/architecture.md): the built-in ``sd3`` family,
the first-party ``sdxl`` and ``flux2`` families and the reward kit (:mod:`gdmd.rewards.loading`)
report load failures the same way through these functions.

Imports no torch; ``huggingface_hub`` and ``diffusers`` are imported when a function needs them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["access_denied", "access_hint", "dtype_kwarg", "first_line"]

#: What the hub says when a repository needs its licence accepted or a token.
_DENIED = re.compile(r"\bgated\b|\b40[13]\b.*\berror\b|\berror\b.*\b40[13]\b", re.IGNORECASE)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, without a final full stop (hub
    errors are long; callers add their own punctuation)."""
    for line in str(err).strip().splitlines():
        if line.strip():
            return line.strip().rstrip(".")
    return type(err).__name__


def access_denied(err: BaseException) -> bool:
    """Whether loading failed because the hub refused access: a ``GatedRepoError``, or an
    HTTP 401/403, anywhere in the chain of exceptions diffusers or transformers wrap it in."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GatedRepoError):
            return True
        status = getattr(getattr(current, "response", None), "status_code", None)
        if isinstance(current, HfHubHTTPError) and status in (401, 403):
            return True
        if _DENIED.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def access_hint(model: str) -> str:
    """How to get access to a hub repository that refused it (see :func:`access_denied`)."""
    return (
        f"The hub refused access: {model} is a gated model (or a private one), which needs its "
        f"licence accepted or a token. Open https://huggingface.co/{model} while logged in and "
        "accept the licence, then log in here with `huggingface-cli login` (or `hf auth "
        "login`), or set HF_TOKEN to an access token of that account. Or point `model` at a "
        "local copy of the pipeline (a directory with model_index.json)."
    )


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype argument: ``dtype`` in recent diffusers, else ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    name = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    return {name: dtype}
