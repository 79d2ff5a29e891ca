"""The ``gdmd`` command line: each command a function of a module of this package, gathered
into an application by :func:`make_app` (:mod:`.app`).

Commands: ``list-plugins`` (:mod:`.plugins`), ``validate`` and ``schema`` (:mod:`.recipes`),
``run`` (:mod:`.run`), ``sample`` (:mod:`.sample`), ``eval`` (:mod:`.evaluate`), ``export``
(:mod:`.export`), ``plugin`` (:mod:`gdmd.scaffold`), plus any a plugin adds through
``gdmd_register_commands``. What the commands share is in :mod:`.common`. A command finds the
plugin manager of its application as ``ctx.obj.pm`` (built on first use unless
:func:`make_app` was given one). A :class:`gdmd.errors.GdmdError` escaping a command is printed
as ``error: <message>`` on stderr (no traceback) and the process exits with its
``exit_code``; Ctrl-C exits with 130.

Importing this package and ``gdmd --help`` import no torch: plugin loading, recipes and
training are imported inside the commands.
"""

from gdmd.cli.app import EXIT_INTERRUPTED, main, main_options, make_app
from gdmd.cli.common import print_error
from gdmd.cli.plugins import plugin_listing

__all__ = [
    "EXIT_INTERRUPTED",
    "main",
    "main_options",
    "make_app",
    "plugin_listing",
    "print_error",
]
