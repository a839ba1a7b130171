"""The ``cervixautoseg`` command line (also ``python -m CervixAutoSegLib``).

Each sub-command lives in its own module of :mod:`CervixAutoSegLib.commands` and
provides ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.

One error path for every command (exit codes: the table in :mod:`CervixAutoSegLib.errors`):

* an error the package reports on purpose (:class:`~CervixAutoSegLib.errors.CervixAutoSegError`)
  becomes ``cervixautoseg COMMAND: error: <message>`` on stderr and the error's exit code;
* an operating-system error the user can fix (disk full, permission denied, read-only file
  system; :func:`~CervixAutoSegLib.errors.fixable_os_error`) becomes the same kind of line,
  naming the file, and exit code 7;
* anything else is a bug: ``cervixautoseg COMMAND: internal error (Type: message); full traceback
  in LOG`` and exit code 70.  The log file (command line, versions, traceback) goes to
  :func:`log_folders` — never into the user's output folder; ``-v`` also prints the traceback.

Never a bare traceback, whatever happens inside a command.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import logging
import os
import shlex
import stat
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Sequence

from . import __version__
from .errors import (
    INTERNAL_ERROR_EXIT_CODE,
    INTERRUPTED_EXIT_CODE,
    Cancelled,
    CervixAutoSegError,
    fixable_os_error,
)

COMMANDS = (
    "phantom",
    "series",
    "segment",
    "evaluate",
    "export_rtstruct",
    "train",
    "benchmark",
    "qa_calibrate",
    "review",
    "dataset",
    "batch",
)
"""Sub-command module names; the command name is the module name with '-' for '_'."""

PROGRAM = "cervixautoseg"
LOG_DIR_ENV = "CERVIXAUTOSEG_LOG_DIR"
"""Folder for internal-error logs, overriding :func:`log_folders` (tests, managed installs)."""
LOG_PREFIX = f"{PROGRAM}-"
LOG_SUFFIX = ".log"
KEPT_LOGS = 50
"""Internal-error logs kept per folder; older ones are removed so the folder cannot grow without end."""
SUMMARY_CHARS = 200
"""The exception text in the one-line message is cut here; the log has all of it."""
_PRIVATE_FOLDER_MODE = 0o700
WARNINGS_LOGGER = "py.warnings"
"""The logger :func:`logging.captureWarnings` sends Python warnings to."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Auto-contouring of cervical-cancer radiotherapy structures on CT and T2w MRI.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details to stderr (and the traceback of an internal error)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        module = importlib.import_module(f".commands.{module_name}", __package__)
        name = module_name.replace("_", "-")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (see the module docstring: never a bare traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, verbose, writing = PROGRAM, "-v" in argv or "--verbose" in argv, ""
    try:
        args = build_parser().parse_args(argv)  # SystemExit(2) with argparse's usage line on bad options
        command, verbose = f"{PROGRAM} {args.command}", args.verbose
        writing = f"--out {args.out}" if getattr(args, "out", None) else ""
        configure_logging(verbose)
        with library_warnings_logged(verbose):
            return int(args.handler(args) or 0)
    except Cancelled:
        print(f"{command}: cancelled", file=sys.stderr)
        return Cancelled.exit_code
    except CervixAutoSegError as error:
        return _report_error(command, error)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except Exception as error:  # noqa: BLE001 - the one place where every unexpected exception ends
        return _report_unexpected(command, argv, error, verbose, writing)


def run() -> None:
    """The ``cervixautoseg`` program: :func:`main` on ``sys.argv``, then :func:`exit_promptly`."""
    exit_promptly(main())


def exit_promptly(code: int) -> NoReturn:
    """End the process with ``code``, skipping the interpreter's teardown when nothing needs it.

    Unloading torch (its operator registry, oneDNN and OpenMP state) takes 0.4-0.7 s after every
    command that ran a network, although every output is written, renamed and closed by then.
    The exit handlers still run (logging is flushed, ``atexit`` and weakref finalizers such as
    temporary-folder clean-ups), then the standard streams are flushed; only with another
    non-daemon thread or a child process still alive does the normal exit run instead.
    """
    import atexit
    import multiprocessing
    import threading

    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if lingering or multiprocessing.active_children():
        sys.exit(code)
    atexit._run_exitfuncs()  # noqa: SLF001 - the documented handlers, run exactly as a normal exit would
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):  # C libraries' stdio buffers (oneDNN's verbose lines into a pipe)
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(code)


class PackageRecordsOnly(logging.Filter):
    """Passes the package's own records, and other libraries' only from ERROR up: pydicom's value
    checks ("Invalid value for VR IS") and the like are for developers; on a user's terminal they
    would break the one-line contract."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == __package__ or record.levelno >= logging.ERROR


def configure_logging(verbose: bool) -> None:
    """Log records to stderr as ``LEVEL: message``: INFO up with ``-v``, else WARNING up and only the
    package's own (:class:`PackageRecordsOnly`).  A logging set-up already in place (a host
    application, pytest) is left as it is."""
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if not verbose:
        for handler in root.handlers:
            handler.addFilter(PackageRecordsOnly())


@contextlib.contextmanager
def library_warnings_logged(verbose: bool) -> Iterator[None]:
    """Python warnings (numpy overflow on absurd header numbers, pydicom value checks) become
    records of the ``py.warnings`` logger, shown only with ``-v``: they are for developers, and
    printed raw they would break the one-line contract (two lines each, source line included).
    The package itself reports through logging, never ``warnings.warn``."""
    logger = logging.getLogger(WARNINGS_LOGGER)
    saved_level = logger.level
    logging.captureWarnings(True)
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        logger.setLevel(saved_level)


def _report_error(command: str, error: CervixAutoSegError) -> int:
    """One line for an error reported on purpose; returns its exit code."""
    message = " ".join(str(error).split())
    print(f"{command}: error: {message}", file=sys.stderr)
    return error.exit_code


def _report_unexpected(command: str, argv: Sequence[str], error: Exception, verbose: bool,
                       writing: str) -> int:
    """A fixable OS error → one line naming the file (``writing``: the output option, for errors
    the OS gives without a file name); anything else → one line naming the log of the traceback."""
    if verbose:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    fixable = fixable_os_error(error, writing)
    if fixable is not None:
        return _report_error(command, fixable)
    log_path = write_error_log(command, argv, error)
    where = (f"full traceback in {log_path}" if log_path is not None
             else "the traceback could not be saved anywhere; run again with -v to see it")
    print(f"{command}: internal error ({exception_summary(error)}); {where}", file=sys.stderr)
    return INTERNAL_ERROR_EXIT_CODE


def exception_summary(error: BaseException) -> str:
    """``"ValueError: first line of the message"``, at most :data:`SUMMARY_CHARS` characters."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, MemoryError):
        text = "out of memory"
    summary = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return summary if len(summary) <= SUMMARY_CHARS else summary[: SUMMARY_CHARS - 3] + "..."


# ---------------------------------------------------------------- the internal-error log
def log_folders() -> Iterator[Path]:
    """Where internal-error logs go, best first (each is tried until one takes the file):

    1. ``$CERVIXAUTOSEG_LOG_DIR``;
    2. the per-user state folder: ``$XDG_STATE_HOME/cervixautoseg/logs`` (default
       ``~/.local/state/cervixautoseg/logs``), ``%LOCALAPPDATA%\\cervixautoseg\\logs`` on Windows;
    3. ``<temp>/cervixautoseg-logs-<user>`` (home not writable: a container, a service account).
    """
    override = os.environ.get(LOG_DIR_ENV)
    if override:
        yield Path(override)
    if os.name == "nt":  # pragma: no cover - Windows
        base = os.environ.get("LOCALAPPDATA")
        if base:
            yield Path(base) / PROGRAM / "logs"
    else:
        state = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
        if os.path.isabs(state):  # the XDG spec says to ignore a relative path
            yield Path(state) / PROGRAM / "logs"
    yield _temporary_log_folder()


def _temporary_log_folder() -> Path:
    """The last resort of :func:`log_folders`, in the shared temp dir."""
    return Path(tempfile.gettempdir()) / f"{PROGRAM}-logs-{_user_tag()}"


def write_error_log(command: str, argv: Sequence[str], error: BaseException) -> Path | None:
    """Write the full report of ``error`` to a new log file; its path, or None when no folder took it."""
    text = _log_text(command, argv, error)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"{LOG_PREFIX}{command.split()[-1]}-{stamp}-{os.getpid()}{LOG_SUFFIX}"
    for folder in log_folders():
        try:
            _make_log_folder(folder, private=folder == _temporary_log_folder())
            path = folder / name
            # "x": never follow or clobber an existing file; mode 0o666 & ~umask like any file of the user's.
            with open(path, "x", encoding="utf-8") as stream:
                stream.write(text)
        except OSError:
            continue
        _prune_logs(folder)
        return path
    return None


def _make_log_folder(folder: Path, *, private: bool) -> None:
    """Create ``folder`` (umask applies).  A folder in the shared temp dir is made owner-only and
    must be a real folder of this user: other users can see (and pre-create) names there, and a
    traceback names patients' files."""
    if not private:
        folder.mkdir(parents=True, exist_ok=True)
        return
    try:
        folder.mkdir(mode=_PRIVATE_FOLDER_MODE)
    except FileExistsError:
        pass
    status = os.lstat(folder)  # lstat: a link planted under that name is refused, not followed
    if not stat.S_ISDIR(status.st_mode) or (hasattr(os, "getuid") and status.st_uid != os.getuid()):
        raise PermissionError(f"{folder} is not a folder of this user")


def _log_text(command: str, argv: Sequence[str], error: BaseException) -> str:
    """Command line, versions and the full traceback (with its causes)."""
    import platform

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"{command}: internal error, {now}",
        f"command line: {PROGRAM} {shlex.join(str(arg) for arg in argv)}",
        f"working folder: {os.getcwd()}",
        f"{PROGRAM} {__version__}; Python {sys.version.split()[0]}; {platform.platform()}",
        "",
    ]
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return "\n".join(lines) + trace


def _prune_logs(folder: Path) -> None:
    """Keep the newest :data:`KEPT_LOGS` logs of ours in ``folder`` (a failure here is harmless)."""
    try:
        logs = sorted((entry for entry in folder.iterdir()
                       if entry.name.startswith(LOG_PREFIX) and entry.name.endswith(LOG_SUFFIX)),
                      key=lambda entry: entry.stat().st_mtime)
        for old in logs[:-KEPT_LOGS]:
            old.unlink()
    except OSError:
        pass


def _user_tag() -> str:
    """The user's id (POSIX) or name: per-user temp folder names."""
    if hasattr(os, "getuid"):
        return str(os.getuid())
    return "".join(c for c in os.environ.get("USERNAME", "user") if c.isalnum()) or "user"  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
