"""Every hook a gdmd plugin can implement. This module is the only place hooks live.

A plugin is a module (or object) with functions marked ``@gdmd.hookimpl``, published through
the entry-point group ``gdmd``::

    [project.entry-points.gdmd]
    my_plugin = "my_package.gdmd_plugin"

Hooks only *register*: they hand names, factories and config models to a typed ``register``
callable. Behaviour lives in the objects the factories build. Keep plugin modules cheap to
import (no torch, diffusers or transformers at module level): ``gdmd --help`` and
``gdmd list-plugins`` import every plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from gdmd.registry import Register

if TYPE_CHECKING:
    import typer

hookspec = pluggy.HookspecMarker("gdmd")

__all__ = [
    "Register",
    "gdmd_register_commands",
    "gdmd_register_models",
    "gdmd_register_prompts",
    "gdmd_register_rewards",
    "gdmd_register_targets",
    "hookspec",
]


@hookspec
def gdmd_register_models(register: Register) -> None:
    """Register model families: diffusion models that can be a teacher, student or critic.

    :param register: ``register(name, factory, *, config=None, summary="",
        roles=("teacher", "student", "critic"))``. ``factory(config, ctx)`` returns a
        :class:`gdmd.interfaces.DiffusionModel`; ``ctx.components`` holds what it is built
        from (the built teacher, when a student or critic has ``init_from = "teacher"``).

    Implementing this hook: call ``register`` once per family. Declare the roles the family
    can fill (a recipe that puts it in another role is an error). A student or critic table
    of the teacher's kind inherits the teacher's keys, so make options that only a student
    needs (LoRA rank, ...) optional.

    Exporting: a family whose student can be written for other tools (``gdmd export``)
    implements :class:`gdmd.interfaces.Exportable` on the model its factory builds: a class
    attribute ``export_formats`` (e.g. ``("lora", "merged")``) and ``export(directory,
    format, info) -> list[Path]``, where ``info`` is a :class:`gdmd.interfaces.ExportInfo`
    (the trained timesteps, the run's dtype, the student's and teacher's configs, what the
    model card needs). ``gdmd export`` opens the run, loads the trained student from its
    newest checkpoint and calls ``export`` on a fresh folder; a family without it is refused
    with a message naming the family. Raise a :class:`gdmd.errors.GdmdError` for a student
    that cannot be written in the format asked for.
    """


@hookspec
def gdmd_register_rewards(register: Register) -> None:
    """Register reward models that score images against prompts.

    :param register: ``register(name, factory, *, config=None, summary="")``.
        ``factory(config, ctx)`` returns a :class:`gdmd.interfaces.RewardModel`.

    Implementing this hook: import heavy libraries (torch, open_clip, ...) inside the
    factory, not at module level. Set ``differentiable`` on the reward object truthfully; only
    the ``dmdr`` target needs gradients from a reward. The recipe table ``[reward.<label>]``
    keeps ``kind``, ``weight`` and ``normalise`` for itself; every other key goes to your
    config.
    """


@hookspec
def gdmd_register_targets(register: Register) -> None:
    """Register gradient-target strategies (``dmd``, ``gdmd``, ``dmdr``, ...).

    :param register: ``register(name, factory, *, config=None, summary="")``.
        ``factory(config, ctx)`` returns a :class:`gdmd.interfaces.TargetStrategy`.

    Implementing this hook: the strategy sees models and rewards only through
    :class:`gdmd.interfaces.TargetContext` and never calls ``backward``.
    """


@hookspec
def gdmd_register_prompts(register: Register) -> None:
    """Register prompt sources (a list in the recipe, a text file, generated prompts).

    :param register: ``register(name, factory, *, config=None, summary="")``.
        ``factory(config, ctx)`` returns a :class:`gdmd.interfaces.PromptSource`.

    Implementing this hook: draw prompts only with the generator passed to ``sample`` so runs
    are reproducible and resumable.
    """


@hookspec
def gdmd_register_commands(app: typer.Typer) -> None:
    """Add commands to the ``gdmd`` command line.

    :param app: a Typer application whose commands join ``gdmd``'s; add commands with
        ``@app.command()`` or groups with ``app.add_typer(...)``.

    Implementing this hook: keep command modules cheap to import (import heavy libraries
    inside the command function). A built-in command of the same name wins. Raise a
    :class:`gdmd.errors.GdmdError` for a user's mistake: the CLI prints its message without a
    traceback and exits with its ``exit_code``.
    """
