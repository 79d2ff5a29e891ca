"""The toy models gdmd ships: the default teacher, alignment reward and evaluator.

Models trained on first use differ from machine to machine (float order changes with the CPU
and the thread count), so nobody could reproduce the documented toy numbers. gdmd therefore
ships the three default models as cache entries inside the package, under
``gdmd/toy/shipped/<kind>/<key>/``, laid out exactly as :mod:`gdmd.toy.cache` lays out a
trained entry (same key, ``cache-entry.json``, completion marker, safetensors weights). A
request whose settings match a shipped entry loads it; any other settings train on first use
and are cached as before.

``benchmarks/build_toy_models.py`` rebuilds every shipped entry from the project's own
training code; it sets :data:`DISABLE_ENV` so the lookup below cannot hand it the old files.

Imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gdmd.toy.cache import ENTRY_FILE, cache_key, cached

#: Where the shipped entries live, inside the installed package.
SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
#: Set to ``0`` to ignore the shipped entries (rebuilding them, or training your own).
DISABLE_ENV = "GDMD_SHIPPED_MODELS"


def shipped_enabled() -> bool:
    """Whether shipped entries are used (``$GDMD_SHIPPED_MODELS`` is not ``0``)."""
    return os.environ.get(DISABLE_ENV, "1").strip() != "0"


def shipped_entry(
    kind: str, config: Mapping[str, Any], *, root: Path | None = None
) -> Path | None:
    """The shipped entry for ``(kind, config)``, or ``None`` when gdmd ships none for it."""
    if not shipped_enabled():
        return None
    entry = (root if root is not None else SHIPPED_ROOT) / kind / cache_key(kind, config)
    # The description file, not the cache's dot-file marker, which packaging may leave out;
    # the rebuild command only ever copies whole entries.
    return entry if (entry / ENTRY_FILE).is_file() else None


def shipped_or_cached(
    kind: str,
    config: Mapping[str, Any],
    build: Callable[[Path], None],
    *,
    root: Path | None = None,
    shipped_root: Path | None = None,
) -> Path:
    """The shipped entry for ``(kind, config)`` if there is one, else :func:`cached`'s
    (which trains on first use). ``root`` is the cache root, as for :func:`cached`;
    ``shipped_root`` overrides :data:`SHIPPED_ROOT`."""
    return shipped_entry(kind, config, root=shipped_root) or cached(kind, config, build, root=root)
