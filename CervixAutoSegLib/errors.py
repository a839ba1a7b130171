"""Exceptions that mean "the user gave us something we cannot use".

The command line turns an :class:`InputError` into one line on stderr and a non-zero
exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a message a clinical user can act on, on one line."""

    exit_code = 2


class ModelError(InputError):
    """A model directory that cannot be used (missing, corrupt, checksum mismatch)."""

    exit_code = 3


class Cancelled(Exception):
    """The user cancelled a running job; nothing was written."""
