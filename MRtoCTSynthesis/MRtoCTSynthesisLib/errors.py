"""Errors the engine raises for problems a user can fix.

Every :class:`InputError` names the problem and the fix, so the CLI and the Slicer module can show
the message as it is instead of a traceback from deep inside torch or SimpleITK.
"""

from __future__ import annotations


class InputError(ValueError):
    """A user-fixable problem with an input file, a parameter or a checkpoint.

    ``problem`` says what is wrong, ``fix`` what to do about it; ``str(err)`` joins both.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  Fix: {fix}")


class CancelledError(RuntimeError):
    """Raised when a caller's cancel callback asks a long-running job to stop."""
