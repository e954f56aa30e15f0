"""Errors that reach the user as one line (no traceback) from the command-line tools.

A `UserError` is something the user can fix, and its message says how. Any other exception is a
bug in the package and keeps its traceback. Where a library caller would expect a built-in type,
the error is also one (`ConfigurationError` is a `ValueError`, `MissingDependencyError` an
`ImportError`).
"""

import sys
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix; the message says how."""


class ConfigurationError(UserError, ValueError):
    """A value given by the user that cannot be used here (an argument, a config field)."""


class MissingDependencyError(UserError, ImportError):
    """An optional package is not installed; the message names what to install."""


class DataNotFoundError(UserError):
    pass


class WeightsNotFoundError(UserError):
    pass


class WeightFileError(UserError, ValueError):
    """A weight file that cannot be read, or holds something other than weights."""


class CheckpointMismatchError(UserError):
    pass


class CheckpointSaveError(UserError):
    pass


def exit_code_of(command: Callable[[], None]) -> int:
    """Runs a CLI command: 0, or 1 after printing `error: ...` (no traceback) for a `UserError`.
    Other exceptions propagate with their traceback."""
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
