"""The one error type a user sees: a single line that says what to do, and a non-zero exit.

It is invoke's ``Exit``, so a task that raises it ends with the message on stderr and no
traceback; the domain modules raise it directly instead of each task translating errors.
"""

from __future__ import annotations

from invoke.exceptions import Exit


class StackError(Exit):
    """A failure the user can act on. ``str(err)`` is the one line printed."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message=message, code=code)

    def __str__(self) -> str:
        return str(self.message)
