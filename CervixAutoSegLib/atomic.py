"""Atomic file output: a reader sees the old file or the complete new one, never half.

Every writer in the package goes through :func:`atomic_path`: write to a temporary
file in the destination folder, flush it to disk, then ``os.replace`` it over the
target.  On any exception the temporary file is removed and the target is untouched.

Leftovers: a process killed while writing (SIGKILL, power loss) leaves its temporary file, which
may hold patient data.  Its name carries the host and the pid
(``.<name>.cervixautoseg-tmp-<host>-<pid>-<random><suffix>``), so the next write of the same
target on the same host removes the temporaries of processes that are gone
(:func:`remove_stale_temporaries`); those of live processes or other hosts are left alone.

Modes: ``mkstemp`` creates the temporary file owner-only (0600), which is right while it
is being written but wrong for the result, so :func:`atomic_path` gives the finished file
the mode any ordinary program would (:func:`follow_umask`: ``0o666 & ~umask``) before it
appears under its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .processes import process_alive

_UMASK_LOCK = threading.Lock()
TEMPORARY_TAG = "cervixautoseg-tmp"


def _host_tag() -> str:
    """Six hex digits naming this host (pids of other hosts on a shared file system mean nothing here)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:6]


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the temporary files that killed writes of ``target`` on this host left beside it."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{TEMPORARY_TAG}-([0-9a-f]{{6}})-(\d+)-")
    host, removed = _host_tag(), []
    with contextlib.suppress(OSError), os.scandir(target.parent) as entries:
        for entry in entries:
            match = pattern.match(entry.name)
            if match and match.group(1) == host and not process_alive(int(match.group(2))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``.  Elsewhere ``os.umask`` is the only way to read
    it, which sets it too: it is set to the most private value for the instant it takes, so a
    file another thread creates meanwhile comes out too private rather than too open.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """Give ``path`` the mode the user's umask asks for: ``0o666 & ~umask`` for a file,
    ``0o777 & ~umask`` for a folder (what ``open``/``mkdir`` would have made)."""
    path = Path(path)
    full = 0o777 if path.is_dir() else 0o666
    os.chmod(path, full & ~current_umask())


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it over ``target`` on success.

    ``suffix`` defaults to the target's full suffix (e.g. ``.nii.gz``) so that writers
    that pick a format from the file name (SimpleITK, pynrrd) still do.  The finished
    file follows the user's umask (:func:`follow_umask`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(target.suffixes)
    remove_stale_temporaries(target)
    prefix = f".{target.name}.{TEMPORARY_TAG}-{_host_tag()}-{os.getpid()}-"
    handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb+") as stream:
            os.fsync(stream.fileno())
        follow_umask(temporary_path)
        os.replace(temporary_path, target)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(target: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))
