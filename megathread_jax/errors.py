"""Errors that reach the user as one line (no traceback) from the command-line tools.

A `UserError` is something the user can fix, and its message says how. Any other exception is a
bug in the package and keeps its traceback. Where a library caller would expect a built-in type,
the error is also one (`ConfigurationError` is a `ValueError`, `MissingDependencyError` an
`ImportError`). Each carries the exit code its command ends with: 2 for a usage error (a value the
user typed that cannot be used), 1 for a failure, 128 + the signal's number for a stop by a signal,
as shells report it.
"""

import signal
import sys
from collections.abc import Callable

USAGE_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


class UserError(Exception):
    """Something the user can fix; the message says how."""

    exit_code = 1


class ConfigurationError(UserError, ValueError):
    """A value given by the user that cannot be used here (an argument, a config field)."""

    exit_code = USAGE_EXIT_CODE


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


class WorkdirConflictError(ConfigurationError):
    """The workdir holds a run that this command's config would continue on another trajectory."""


class CheckpointSaveError(UserError):
    pass


class StoppedBySignal(UserError):
    """A run stopped by SIGINT or SIGTERM after saving; exits 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def exit_code_of(command: Callable[[], None]) -> int:
    """Runs a CLI command: 0, or the error's exit code after printing `error: ...` (no traceback)
    for a `UserError`; Ctrl-C outside a run's own handler gives 130. Other exceptions propagate
    with their traceback."""
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nerror: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    return 0
