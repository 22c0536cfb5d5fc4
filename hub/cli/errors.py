"""User-facing errors: one message, the next thing to run, no traceback."""

from __future__ import annotations


class CliError(Exception):
    """An error the user can act on. `hint` names the next command to run."""

    def __init__(self, message: str, hint: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code
