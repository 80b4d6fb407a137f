"""The one base class for errors meant for the user: the CLI prints `error: MESSAGE` and exits.

    python -c "from parsgd.errors import UserError; raise SystemExit(UserError.exit_code)"

Every module below the CLI raises a subclass of `UserError` (never a click exception) whose message
is one line naming what is wrong and the fix. `exit_code` is 1, or 2 for bad usage.
"""
from __future__ import annotations


class UserError(Exception):
    """A failure the user can act on; `str(exc)` is the one-line message, `exit_code` the status."""

    exit_code = 1


class UsageError(UserError):
    """An option or argument has a value parsgd cannot use (exit 2, like click's usage errors)."""

    exit_code = 2


class Interrupted(UserError):
    """The user stopped a job (Ctrl-C, SIGTERM) while a child process ran; exit 130 like a shell."""

    exit_code = 130

    def __init__(self, message: str = "interrupted"):
        super().__init__(message)
