"""Atomic file output: a reader sees the old file or the complete new one, never half.

Every writer in the package goes through :func:`atomic_path`: write to a temporary
file in the destination folder, flush it to disk, then ``os.replace`` it over the
target.  On any exception the temporary file is removed and the target is untouched.

Modes: ``mkstemp`` creates the temporary file owner-only (0600), which is right while it
is being written but wrong for the result, so :func:`atomic_path` gives the finished file
the mode any ordinary program would (:func:`follow_umask`: ``0o666 & ~umask``) before it
appears under its name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_UMASK_LOCK = threading.Lock()


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
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
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
