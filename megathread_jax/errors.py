"""Errors that reach the user as a short message (no traceback) from the command-line tools."""

import sys
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix; the message says how."""


class DataNotFoundError(UserError):
    pass


class WeightsNotFoundError(UserError):
    pass


class CheckpointMismatchError(UserError):
    pass


class CheckpointSaveError(UserError):
    pass


def exit_code_of(command: Callable[[], None]) -> int:
    """Runs a CLI command: 0, or 1 after printing `error: ...` (no traceback) for input the user
    can fix (bad values, missing files, offline downloads, missing extras)."""
    try:
        command()
    except (UserError, ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
