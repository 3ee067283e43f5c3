"""User-facing errors.

Anything a user can cause (a missing file, a bad flag value, a model that cannot
be found offline) raises :class:`TransferkitError` with one clear sentence.  The
CLI prints that sentence and exits with status 2; it never shows a traceback for
these.  Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """An error caused by input the user can fix; ``str(err)`` is the message."""


class ImageReadError(TransferkitError):
    """One image file could not be read; carries the path and a short reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable, so DataLoader workers can send it back
        return (type(self), (self.path, self.reason))
