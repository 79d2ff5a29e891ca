"""Every error gdmd raises for a user's mistake or a broken contract.

All subclass :class:`GdmdError`; the CLI prints their message (no traceback) and exits with
``exit_code``.
"""

from __future__ import annotations


class GdmdError(Exception):
    """Base class of gdmd's errors. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class RegistryError(GdmdError):
    """A component name is registered twice, or a registration is malformed."""


class IncompatiblePluginError(RegistryError):
    """A plugin was written for a plugin API this gdmd does not provide: it declares a newer
    (or no longer supported) ``GDMD_PLUGIN_API``, or implements a hook gdmd does not have."""

    exit_code = 2

    def __init__(self, message: str, components: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        #: ``(kind, name)`` of the components the plugin would have registered, when known.
        self.components = components


class UnknownComponentError(GdmdError):
    """A recipe or call names a component that no plugin registered."""

    exit_code = 2


class PluginLoadError(GdmdError):
    """A plugin distribution failed to import, and something needs one of its components."""

    exit_code = 2


class RecipeError(GdmdError):
    """A recipe is invalid. ``problems`` holds every problem found, one line each."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        header = "1 problem in the recipe:" if count == 1 else f"{count} problems in the recipe:"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))


class ContractError(GdmdError):
    """A component broke its tensor contract (shape, dtype, device, finiteness)."""


class NonFiniteError(GdmdError):
    """A loss, gradient or reward went NaN/Inf; the run stops before the optimizer step."""

    exit_code = 3


class CheckpointError(GdmdError):
    """A checkpoint is missing, incomplete or does not match the run."""

    exit_code = 2


class RunInterrupted(GdmdError):
    """The run received SIGTERM/SIGINT, saved a checkpoint at the step boundary and stopped."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
