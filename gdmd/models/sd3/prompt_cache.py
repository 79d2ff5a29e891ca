"""A cache of SD3 prompt conditionings on disk (``prompt_cache``), for a fixed prompt set.

A run over a few hundred prompts encodes each of them thousands of times; the text encoders
(two CLIPs and T5-XXL, about 10 GB in bfloat16) then cost memory and time for nothing. With
``prompt_cache = DIR`` every prompt is encoded once and written to a safetensors file; every
later encode, in this run or the next, reads it memory-mapped. With ``text_encoders = "none"``
the encoders are not even loaded and every prompt must be in the cache.

Layout: ``DIR/<identity>/`` per encoder identity (the pipeline's model, revision and variant,
``max_sequence_length`` and whether T5 is used: anything that changes a conditioning), with
``identity.json`` saying what it is, and shard files ``<time>-<process>.safetensors``, each
written once (to a temporary name, then renamed) with the prompts one encode added. A
prompt's tensors are ``<key>.prompt_embeds`` and ``<key>.pooled_prompt_embeds``, where
``<key>`` is the SHA-256 of the prompt; the shard's metadata maps each key to its prompt.
Several processes may write at once: each writes its own shards, and a prompt two of them
encoded is simply stored twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gdmd.errors import GdmdError
from gdmd.interfaces import Conditioning

#: The tensors of one conditioning, as :meth:`SD3SharedComponents.encode` returns them.
FIELDS = ("prompt_embeds", "pooled_prompt_embeds")


class PromptCacheError(GdmdError):
    """A prompt is not in the cache while the text encoders are not loaded, or the cache
    directory cannot be read."""

    exit_code = 2


@dataclass(frozen=True)
class EncoderIdentity:
    """What decides a conditioning besides the prompt: one cache folder per identity."""

    model: str
    revision: str | None
    variant: str | None
    max_sequence_length: int
    uses_t5: bool

    def folder_name(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def prompt_key(prompt: str) -> str:
    """The name a prompt's tensors are stored under."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class PromptCache:
    """The cached conditionings of one encoder identity under ``root``.

    :meth:`lookup` returns the cached tensors of the prompts it has (on the CPU, read from
    memory-mapped safetensors files); :meth:`add` writes new ones as one shard. Shards
    written by other processes after this one started are picked up on a miss.
    """

    def __init__(self, root: str | Path, identity: EncoderIdentity) -> None:
        self.identity = identity
        self.folder = Path(root).expanduser() / identity.folder_name()
        self._where: dict[str, Path] = {}
        self._seen: set[Path] = set()
        self._scan()

    def _scan(self) -> None:
        if not self.folder.is_dir():
            return
        from safetensors import SafetensorError, safe_open

        for shard in sorted(self.folder.glob("*.safetensors")):
            if shard in self._seen:
                continue
            try:
                with safe_open(str(shard), framework="pt") as handle:
                    keys = json.loads((handle.metadata() or {}).get("prompts", "{}"))
            except (OSError, ValueError, SafetensorError) as err:
                raise PromptCacheError(f"cannot read prompt cache shard {shard}: {err}") from err
            self._seen.add(shard)
            for key in keys:
                self._where.setdefault(key, shard)

    def __contains__(self, prompt: str) -> bool:
        return prompt_key(prompt) in self._where

    def __len__(self) -> int:
        return len(self._where)

    def missing(self, prompts: Sequence[str]) -> list[str]:
        """The prompts not in the cache (looking again at the folder first if any is)."""
        absent = [p for p in prompts if p not in self]
        if absent:
            self._scan()
            absent = [p for p in prompts if p not in self]
        return absent

    def lookup(self, prompts: Sequence[str]) -> Conditioning:
        """The cached conditioning of ``prompts`` (all must be cached), batched, on the CPU."""
        from safetensors import safe_open

        keys = [prompt_key(p) for p in prompts]
        by_shard: dict[Path, list[str]] = {}
        for key in keys:
            by_shard.setdefault(self._where[key], []).append(key)
        found: dict[str, dict[str, torch.Tensor]] = {}
        for shard, wanted in by_shard.items():
            with safe_open(str(shard), framework="pt", device="cpu") as handle:
                for key in wanted:
                    found[key] = {f: handle.get_tensor(f"{key}.{f}") for f in FIELDS}
        return {f: torch.stack([found[key][f] for key in keys]) for f in FIELDS}

    def add(self, prompts: Sequence[str], cond: Conditioning) -> Path | None:
        """Write the conditionings of ``prompts`` (rows of ``cond``) not yet cached as one
        shard; returns it, or ``None`` when there was nothing new."""
        from safetensors.torch import save_file

        rows: dict[str, int] = {}
        for row, prompt in enumerate(prompts):
            key = prompt_key(prompt)
            if key not in self._where and key not in rows:
                rows[key] = row
        if not rows:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        identity = self.folder / "identity.json"
        if not identity.is_file():
            identity.write_text(json.dumps(asdict(self.identity), indent=1) + "\n")
        tensors = {
            f"{key}.{f}": cond[f][row].detach().to("cpu").contiguous()
            for key, row in rows.items()
            for f in FIELDS
        }
        texts = {key: prompts[row] for key, row in rows.items()}
        name = f"{time.time_ns():020d}-{os.getpid()}"
        tmp = self.folder / f".{name}.tmp"
        shard = self.folder / f"{name}.safetensors"
        save_file(tensors, str(tmp), metadata={"prompts": json.dumps(texts)})
        tmp.rename(shard)
        self._seen.add(shard)
        for key in rows:
            self._where[key] = shard
        return shard


def describe_missing(prompts: Sequence[str], cache: PromptCache) -> str:
    """The error message for prompts that are not cached while the encoders are not loaded."""
    shown = ", ".join(repr(p) for p in prompts[:3])
    more = f" and {len(prompts) - 3} more" if len(prompts) > 3 else ""
    return (
        f"prompt {shown}{more} is not in the prompt cache {cache.folder} "
        f"({len(cache)} prompts cached), and the text encoders are not loaded "
        '(text_encoders = "none"). Run once with text_encoders = "device" or "offload" over '
        "every prompt to fill the cache, or use prompts that are in it"
    )
