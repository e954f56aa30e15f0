"""Errors that reach the user as a short message (no traceback) from the command-line tools."""


class UserError(Exception):
    """Something the user can fix; the message says how."""


class DataNotFoundError(UserError):
    pass


class WeightsNotFoundError(UserError):
    pass


class CheckpointMismatchError(UserError):
    pass
