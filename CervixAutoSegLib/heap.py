"""Keep freed memory in the C heap while a case is segmented, so the next window reuses it.

Why.  A network pass allocates and frees the same large feature maps over and over (a
PocketNet window: about twenty 32-channel maps of 256 x 256 x 32 voxels, 128 MiB each in
bf16).  glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and gives it back with ``munmap`` on free, so every window touches brand-new
pages: one page fault per 4 KiB, and on a virtual machine each fault can cost the host a
page too.  Measured on the project's 2-core VM (``cervixautoseg benchmark mr``, sagittal series,
flip TTA off): 1.8 s per PocketNet window and 12.7 s of network with the default heap, 0.95 s
and 8.2 s with freed blocks kept, the labels bit for bit the same.

What.  :func:`retained_heap` turns glibc's mmap path off (``M_MMAP_MAX = 0``: every block comes
from the heap) and its trimming off (``M_TRIM_THRESHOLD``), so freed blocks stay mapped and are
handed out again.  On leaving the outermost block it restores glibc's documented defaults and
calls ``malloc_trim(0)``, which returns the retained memory to the system — the peak resident
memory is that of the largest moment, not more.  Nested blocks (the pipeline around a whole
case, the inferer around its windows) share one setting.

Where it does nothing.  Not Linux with glibc (macOS, Windows, musl): their allocators are left
alone.  The one lasting effect elsewhere: glibc's *dynamic* mmap threshold, which any
``mallopt`` call switches off for good, stays at its fixed default afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
"""``mallopt`` parameter numbers (glibc ``malloc.h``)."""
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
"""glibc's documented defaults, restored after the outermost block."""
RETAINED = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
"""No block from ``mmap``; never trim the heap's top (``int`` maximum: about 2 GiB kept at the top)."""

_lock = threading.Lock()
_depth = 0
_in_force = False


def _libc() -> ctypes.CDLL | None:
    """The process's glibc, or None where :func:`retained_heap` must do nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


def _set(libc: ctypes.CDLL, values: dict[int, int]) -> bool:
    return all(libc.mallopt(ctypes.c_int(name), ctypes.c_int(value)) == 1 for name, value in values.items())


@contextlib.contextmanager
def retained_heap() -> Iterator[bool]:
    """Within the block, freed C-heap memory is kept for reuse (yields whether that is in force)."""
    global _depth, _in_force
    libc = _libc()
    with _lock:
        _depth += 1
        if _depth == 1 and libc is not None:
            _in_force = _set(libc, RETAINED)
        in_force = _in_force
    try:
        yield in_force
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _in_force:
                _set(libc, GLIBC_DEFAULTS)
                libc.malloc_trim(ctypes.c_size_t(0))
                _in_force = False
