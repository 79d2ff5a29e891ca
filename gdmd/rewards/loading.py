"""Loading reward checkpoints: hub ids, local directories and files, with errors that help.

Every reward takes its weights from a ``model`` key that may be a Hugging Face Hub id, a local
directory or a checkpoint file: the same loading code serves all three, so a model copied to
an offline machine loads exactly as it would from the hub. What goes wrong is reported as a
:class:`RewardLoadError` that names the reward and says how to fix it, never as a traceback
from deep inside ``huggingface_hub``.

Imported by reward factories only (it imports torch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from gdmd.errors import GdmdError
from gdmd.hub import first_line

__all__ = [
    "RewardLoadError",
    "check_keys",
    "count_blocks",
    "load_checkpoint",
    "load_strictly",
    "describe_keys",
    "first_line",
    "is_hub_id",
    "load_error_details",
    "load_torch_state_dict",
    "offline_hint",
    "resolve_file",
    "torch_dtype",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: How many key names an error lists before it says "... and N more".
_SHOWN_KEYS = 8


class RewardLoadError(GdmdError):
    """A reward's checkpoint, tokenizer or configuration could not be found or does not fit."""

    exit_code = 2


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is spelled like a hub id (``owner/name`` or ``name``)."""
    return bool(_HUB_ID.match(name))


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` -> the torch dtype."""
    return _DTYPES[name]


def offline_hint(what: str) -> str:
    """The sentence that tells an offline user how to point a reward at a local copy."""
    return (
        "If you are offline, set HF_HUB_OFFLINE=1 (so no lookup is attempted) and point the "
        f"key at {what}, or at a model already in the Hugging Face cache."
    )


def resolve_file(
    source: str,
    filename: str,
    *,
    who: str,
    key: str,
    revision: str | None = None,
    what: str,
    required: bool = True,
) -> Path | None:
    """The local path of ``filename`` from ``source``: a file, a directory, or a hub id.

    * an existing file is returned as it is (``filename`` names what it should be);
    * a directory must hold ``filename``;
    * anything else must be a hub id, from which ``filename`` is downloaded (or found in the
      cache when offline).

    A missing file raises :class:`RewardLoadError` naming ``who`` (the reward) and ``key``
    (its recipe key); with ``required=False`` it returns ``None`` instead.
    """
    local = Path(source).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        path = local / filename
        if path.is_file():
            return path
        if not required:
            return None
        raise RewardLoadError(f"{who}: {key} = {source!r} is a directory without {filename}")
    if not is_hub_id(source):
        raise RewardLoadError(
            f"{who}: {key} = {source!r} not found: no such file or directory, and it is not "
            f"a hub id. {offline_hint(what)}"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename, revision=revision))
    except EntryNotFoundError as err:
        # LocalEntryNotFoundError (offline, not cached) is a subclass: not "the repo lacks it".
        if not required:
            return None
        if not isinstance(err, LocalEntryNotFoundError):
            raise RewardLoadError(
                f"{who}: the hub repository {source!r} has no {filename}"
            ) from None
        failure: Exception = err
    except Exception as err:  # noqa: BLE001 - hub errors have many types; all mean "not here"
        if not required:
            return None
        failure = err
    raise RewardLoadError(
        f"{who}: cannot get {filename} of {key} = {source!r}: {first_line(failure)}. "
        f"{offline_hint(what)}"
    ) from failure


def load_torch_state_dict(path: Path, *, who: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt``/``.bin``/``.safetensors`` checkpoint, without running its code.

    ``.pt`` files are read with ``torch.load(weights_only=True)``, which refuses pickled
    code; a checkpoint that wraps its tensors as ``{"state_dict": ...}`` is unwrapped.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors have many types
        raise RewardLoadError(
            f"{who}: cannot read the checkpoint {path}: {first_line(err)}"
        ) from err
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise RewardLoadError(
            f"{who}: {path} is not a state dict (a mapping of names to tensors, or such a "
            "mapping under 'state_dict')"
        )
    return dict(loaded)


def load_checkpoint(
    source: str, filename: str, *, who: str, revision: str | None, what: str
) -> tuple[Path, dict[str, torch.Tensor]]:
    """:func:`resolve_file` of the ``model`` key, then :func:`load_torch_state_dict`."""
    path = resolve_file(source, filename, who=who, key="model", revision=revision, what=what)
    assert path is not None  # required=True: a missing file has raised
    return path, load_torch_state_dict(path, who=who)


def load_strictly(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, who: str, where: Path
) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch names the tensors."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RewardLoadError(
            f"{who}: the checkpoint {where} does not fit: {load_error_details(err)}"
        ) from err


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks ``<prefix><i>.`` a state dict holds (highest index + 1)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def describe_keys(keys: Iterable[str]) -> str:
    """Sorted key names, the first few of them, then how many more."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = len(keys) - _SHOWN_KEYS
    return shown + (f" ... and {more} more" if more > 0 else "")


def load_error_details(err: RuntimeError) -> str:
    """The informative lines of ``load_state_dict``'s error (its first line is only a header)."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    return "; ".join(lines[:3]) + (f" ... and {len(lines) - 3} more" if len(lines) > 3 else "")


def check_keys(
    given: Iterable[str], expected: Iterable[str], *, who: str, where: str | Path
) -> None:
    """Raise :class:`RewardLoadError` naming the missing and unexpected keys, if any."""
    given_set, expected_set = set(given), set(expected)
    missing = expected_set - given_set
    unexpected = given_set - expected_set
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {describe_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {describe_keys(unexpected)}")
    raise RewardLoadError(f"{who}: the checkpoint {where} does not fit: " + "; ".join(parts))
