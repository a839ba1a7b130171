"""Is a process that left something behind still running?  (Staging folders, temporary files.)

Both kinds of leftover name the process that made them (pid, and where known its start time from
:func:`process_start`); the next run removes them only when that process is gone.  Only meaningful
on the host that made them: callers compare host names first.
"""

from __future__ import annotations

import os


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``started``, when known) still runs on this host."""
    if pid == os.getpid():
        return True  # another run in this very process (a thread) may still be writing it
    if os.name == "nt":  # pragma: no cover - Windows; os.kill(pid, 0) would terminate the process there
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    now = process_start(pid)
    # A zombie has finished; a different start time means the pid was reused by another process.
    return not (now == "zombie" or (started is not None and now is not None and now != started))


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks after boot (Linux), ``"zombie"`` for a finished
    process not yet reaped, None where the system does not tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return "zombie" if fields[0] == "Z" else fields[19]


def _windows_process_alive(pid: int) -> bool:  # pragma: no cover - Windows only
    """Whether ``pid`` runs, asked of the kernel without touching the process."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists
    try:
        code = ctypes.c_ulong()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
