"""Train-on-first-use cache entries for the toy domain's models (teacher, reward, evaluator).

An entry is a directory ``$GDMD_CACHE_DIR/<kind>/<key>`` (default root ``~/.cache/gdmd``),
where ``key`` hashes the kind, the config dict and :data:`CACHE_VERSION`. It is built into a
temporary sibling directory, marked complete, and only then renamed into place, so a crash
during a build never leaves a half entry: a directory without the marker is not an entry.
Two processes building the same entry at once both build, and the first rename wins; no lock.

Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: Bump when the toy renderer, grammar or training code changes what an entry would contain.
CACHE_VERSION = "toy-1"
#: The marker file written last, inside the temporary directory, before the rename.
COMPLETE_MARKER = ".complete"
#: Description of the entry (kind, config, version), for people looking into the cache.
ENTRY_FILE = "cache-entry.json"
#: Temporary build directories older than this (seconds) are left over from a crash: removed.
STALE_SECONDS = 24 * 3600

_KIND = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def cache_root() -> Path:
    """``$GDMD_CACHE_DIR``, or ``~/.cache/gdmd`` when it is unset or empty."""
    configured = os.environ.get("GDMD_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "gdmd"


def cache_key(kind: str, config: Mapping[str, Any]) -> str:
    """The hash naming an entry: of ``kind``, ``config`` (as sorted JSON) and the version."""
    payload = json.dumps(
        {"kind": kind, "config": config, "version": CACHE_VERSION}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a whole cache entry (it holds the completion marker)."""
    return (path / COMPLETE_MARKER).is_file()


def _remove_stale_builds(parent: Path, key: str) -> None:
    now = time.time()
    for leftover in parent.glob(f".tmp-{key}-*"):
        try:
            if now - leftover.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue  # another process removed or renamed it meanwhile


def cached(
    kind: str,
    config: Mapping[str, Any],
    build: Callable[[Path], None],
    *,
    root: Path | None = None,
) -> Path:
    """Return the entry directory for ``(kind, config)``, calling ``build(tmp_dir)`` first if
    there is no complete entry yet.

    ``build`` writes whatever the entry holds into the directory it is given (which exists and
    is empty). If it raises, its directory is removed and the error propagates; nothing is
    cached. ``config`` must be JSON-serialisable (other values are hashed by ``str``); put in
    it everything that changes what ``build`` produces. ``root`` overrides :func:`cache_root`.
    """
    if not _KIND.match(kind):
        raise ValueError(f"cache kind must be a simple lower-case name, got {kind!r}")
    parent = (root if root is not None else cache_root()) / kind
    key = cache_key(kind, config)
    entry = parent / key
    if is_complete(entry):
        return entry
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(parent, key)
    temporary = parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        build(temporary)
        description = {"kind": kind, "config": dict(config), "version": CACHE_VERSION}
        (temporary / ENTRY_FILE).write_text(
            json.dumps(description, indent=2, sort_keys=True, default=str) + "\n"
        )
        (temporary / COMPLETE_MARKER).write_text(f"{time.time():.0f}\n")
        if entry.exists() and not is_complete(entry):
            shutil.rmtree(entry, ignore_errors=True)  # not an entry: never made by this code
        try:
            temporary.rename(entry)
        except OSError:
            if not is_complete(entry):
                raise
            # Another process finished the same entry first; theirs is as good as ours.
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return entry
