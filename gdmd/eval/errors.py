"""Errors of ``gdmd eval``'s prompt-set evaluation (imports no torch, so the CLI can raise
them before anything heavy loads)."""

from __future__ import annotations

from gdmd.errors import GdmdError

__all__ = ["SuiteError"]


class SuiteError(GdmdError):
    """An evaluation that cannot run as asked: clashing model names, no metrics, bad seeds
    or options that need ``--prompts``."""

    exit_code = 2
