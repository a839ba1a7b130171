"""The package's exceptions: one base, and what each kind means to the caller.

* :class:`InputError` — the user gave something we cannot use; the command line turns it
  into one line on stderr and a non-zero exit code (never a traceback).
* :class:`ModelError` — a model directory that cannot be used (an :class:`InputError`).
* :class:`GridMismatchError` — two volumes that must share one voxel grid do not; the message
  summarises both grids (size, spacing, origin) on one line (an :class:`InputError`).
* :class:`DependencyError` — packages could not be installed (Slicer's first run).
* :class:`OutputError` — the output location cannot be used (below a file, not writable, a
  folder where a file is wanted); :class:`OutputConflictError` — it holds a file of the user's
  under one of our output names.
* :class:`FileSystemError` — an operating-system error the user can fix: disk full, no
  permission, read-only file system (:func:`fixable_os_error` recognises one).
* :class:`Cancelled` — the user cancelled; nothing was written.
* :class:`TrainingError` — a training run cannot go on (its loss is no longer a number); its last
  checkpoint is kept.

All derive from :class:`CervixAutoSegError`, so a caller that wants "anything this package
reports on purpose" catches one class; anything else is a bug: the command line prints one
line saying so and writes the full traceback to a log file (:mod:`CervixAutoSegLib.cli`).

Exit codes of the ``cervixautoseg`` command (scripts may rely on them):

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     another error the package reports on purpose (:class:`CervixAutoSegError`)
2     bad input (:class:`InputError`, :class:`GridMismatchError`); also a command
      line argparse cannot parse
3     unusable model directory (:class:`ModelError`)
4     required packages missing and not installable (:class:`DependencyError`)
5     output location unusable (:class:`OutputError`)
6     output folder holds a user's file under an output name
      (:class:`OutputConflictError`; ``segment --overwrite`` lets it through)
7     disk full, permission denied or read-only file system (:class:`FileSystemError`)
70    internal error, a bug (``EX_SOFTWARE``): one line on stderr names the log file
      holding the full traceback
130   cancelled (SIGTERM from the Slicer module) or interrupted (Ctrl-C)
====  ==========================================================================
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

INTERNAL_ERROR_EXIT_CODE = 70
"""Exit code of an unexpected exception (a bug): ``EX_SOFTWARE`` of BSD ``sysexits.h``."""
INTERRUPTED_EXIT_CODE = 130
"""Exit code after Ctrl-C or a cancel: 128 + SIGINT, what shells report for an interrupted command."""


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


class OutputError(InputError):
    """The output location cannot be used as asked: below a regular file, not writable, or an
    existing path of the wrong kind (a folder where a file is wanted, or the reverse)."""

    exit_code = 5


class OutputConflictError(OutputError):
    """The output folder holds files with our output names that this tool did not write there,
    or that changed since it did; ``--overwrite`` (``overwrite=True``) lets the run replace them."""

    exit_code = 6


class FileSystemError(CervixAutoSegError):
    """The operating system refused a read or write for a reason the user can fix (disk full,
    quota, no permission, read-only file system); the message names the file when it is known.

    Not an OSError subclass on purpose: OSError's ``str()`` prefixes ``[Errno N]`` and its
    constructor reinterprets the arguments; ``errno`` is kept as an attribute instead.
    """

    exit_code = 7

    def __init__(self, message: str, errno_value: int | None = None):
        super().__init__(message)
        self.errno = errno_value


class TrainingError(CervixAutoSegError):
    """Training cannot go on (e.g. a NaN loss); the checkpoint saved before it stays usable."""


class Cancelled(CervixAutoSegError):
    """The user cancelled a running job; nothing was written."""

    exit_code = INTERRUPTED_EXIT_CODE


# ---------------------------------------------------------------- grids
_GRID_DECIMALS = 3
"""Decimals of spacing and origin in a grid summary: µm precision, far below any voxel."""
_PLAIN_LIMIT = 1e6
"""From this magnitude on (mm) a number is shown in exponent notation."""


def grid_summary(volume: Any) -> str:
    """``"24x24x5 voxels of 0.8x0.8x2.5 mm, origin (-10, -10, 0) mm"`` for a Volume (x, y, z order).

    Plain numbers only (no ``np.float64(...)``), so the line reads the same on every numpy.
    """
    nz, ny, nx = volume.shape
    spacing = "x".join(_number(value) for value in volume.spacing)
    origin = ", ".join(_number(value) for value in volume.origin)
    return f"{nx}x{ny}x{nz} voxels of {spacing} mm, origin ({origin}) mm"


def _number(value: Any) -> str:
    """A coordinate rounded to :data:`_GRID_DECIMALS`, without trailing zeros or a negative zero."""
    number = float(value)
    if not abs(number) < _PLAIN_LIMIT:  # huge, inf or nan: fixed-point would print dozens of digits
        return f"{number:.6g}"
    text = f"{number:.{_GRID_DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


DIRECTION_TOLERANCE = 1e-4
"""Direction cosines closer than this count as equal in a grid message (0.006 degrees)."""


class GridMismatchError(InputError):
    """Two volumes that must lie on one voxel grid do not (labels vs image, truth vs prediction)."""

    @classmethod
    def between(cls, what: str, grids: Mapping[str, Any], hint: str = "") -> GridMismatchError:
        """The error ``"<what> (<name>: <grid>; <name>: <grid>); <hint>"``.

        ``what`` says which files disagree (e.g. ``"--labels l.nii.gz and the DICOM series are not on the
        same voxel grid"``), ``grids`` maps a short name to each Volume (summarised by :func:`grid_summary`),
        ``hint`` says what to do.  Directions are not summarised (nine numbers); when they are
        the only difference, the line says so.
        """
        import numpy as np

        volumes = list(grids.values())
        parts = [f"{name}: {grid_summary(volume)}" for name, volume in grids.items()]
        alike = len({grid_summary(volume) for volume in volumes}) == 1
        if alike and not all(np.allclose(volumes[0].direction, other.direction, atol=DIRECTION_TOLERANCE)
                             for other in volumes[1:]):
            parts.append("axis directions differ")
        message = f"{what} ({'; '.join(parts)})"
        return cls(f"{message}; {hint}" if hint else message)


# ---------------------------------------------------------------- operating-system errors
FIXABLE_ERRNOS = {
    errno.ENOSPC: "free some disk space and run again",
    errno.EDQUOT: "the disk quota is exhausted: free some space and run again",
    errno.EFBIG: "larger than the file system or the file-size limit (ulimit -f) allows",
    errno.EACCES: "check the permissions or choose another location",
    errno.EPERM: "check the permissions or choose another location",
    errno.EROFS: "the file system is read-only: choose another location",
}
"""errno values a user can act on, with what to do; any other OSError is treated as a bug."""


def fixable_os_error(error: BaseException, unnamed: str = "") -> FileSystemError | None:
    """A one-line :class:`FileSystemError` for ``error`` (or the OSError that caused it, following
    ``__cause__``/``__context__``) when its errno is in :data:`FIXABLE_ERRNOS`; else None.

    ``unnamed`` says where the command was writing (e.g. ``"--out results"``), for the errors
    the OS raises without a file name (a ``write`` on a full disk).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FIXABLE_ERRNOS:
            return FileSystemError(_os_error_line(current, unnamed), current.errno)
        current = current.__cause__ or current.__context__
    return None


def _os_error_line(error: OSError, unnamed: str) -> str:
    """``"<file>: <reason> (<what to do>)"``; ``unnamed`` stands in when the OS named no file."""
    reason = error.strerror or errno.errorcode.get(error.errno or 0, type(error).__name__)
    files = [str(name) for name in (error.filename, error.filename2) if name is not None]
    line = f"{reason} ({FIXABLE_ERRNOS[error.errno]})"
    if files:
        return f"{' -> '.join(files)}: {line}"
    return f"{line} while writing to {unnamed}" if unnamed else line
