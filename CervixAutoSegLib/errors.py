"""The package's exceptions: one base, and what each kind means to the caller.

* :class:`InputError` — the user gave something we cannot use; the command line turns it
  into one line on stderr and a non-zero exit code (never a traceback).
* :class:`ModelError` — a model directory that cannot be used (an :class:`InputError`).
* :class:`DependencyError` — packages could not be installed (Slicer's first run).
* :class:`Cancelled` — the user cancelled; nothing was written.

All derive from :class:`CervixAutoSegError`, so a caller that wants "anything this package
reports on purpose" catches one class; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CervixAutoSegError(Exception):
    """Base of every exception the package raises on purpose."""

    exit_code = 1


class InputError(CervixAutoSegError, ValueError):
    """Bad input: a message a clinical user can act on, on one line."""

    exit_code = 2


class ModelError(InputError):
    """A model directory that cannot be used (missing, corrupt, checksum mismatch, bad card)."""

    exit_code = 3


class DependencyError(CervixAutoSegError, RuntimeError):
    """Required packages could not be installed; the message says what to do."""

    exit_code = 4


class Cancelled(CervixAutoSegError):
    """The user cancelled a running job; nothing was written."""

    exit_code = 130
