"""The one base class of the errors a user can fix: a wrong flag, a missing credential, a bad file.

The CLI prints these as one line and a hint (the traceback only with ``--verbose``); any other exception is a
bug and keeps its traceback. Library errors that are the caller's mistake subclass :class:`UserError` (and the
built-in type callers already catch, e.g. ``ValueError``), so the CLI never decides by matching message text.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (flags, files, environment); ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint
