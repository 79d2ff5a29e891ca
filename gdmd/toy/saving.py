"""Saving and loading the toy networks: ``model.safetensors`` + ``config.json``, no pickle.

The alignment model and the attribute evaluator share this format: the weights, and a JSON
config holding a format tag, its version and the architecture dataclass's fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gdmd.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_network(
    module: torch.nn.Module, architecture: Any, directory: str | Path, fmt: str, version: int
) -> None:
    """Write ``module``'s weights and ``architecture`` (a dataclass) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE))
    config = {"format": fmt, "format_version": version, **asdict(architecture)}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_network(
    directory: str | Path, fmt: str, version: int, what: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The architecture fields (lists as tuples) and weights saved by :func:`save_network`.

    ``what`` names the kind of network in errors ("alignment model", "evaluator").
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{directory} is not a saved {what} (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not a JSON {what} config ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a {fmt} v{version} config")
    if config.pop("format", None) != fmt or config.pop("format_version", None) != version:
        raise CheckpointError(f"{config_path} is not a {fmt} v{version} config")
    fields = {key: tuple(v) if isinstance(v, list) else v for key, v in config.items()}
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{weights_path} is not a readable safetensors file of a {what} ({exc})"
        ) from exc
    return fields, weights
