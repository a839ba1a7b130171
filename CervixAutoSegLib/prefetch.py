"""Read the input in a forked child while this process imports torch (the command line's head start).

Why.  A fresh ``cervixautoseg segment`` spends about a second importing torch before the network
can start, and half a second reading and checking a 100-slice CT series; both are
single-threaded Python, so threads cannot overlap them (the GIL), but two processes can.
:func:`start` forks a child that runs the loading function and sends its result back through a
pipe (pickle protocol 5: the voxel array travels as one raw buffer, copied once), while the
parent goes on importing torch.  :meth:`Prefetch.result` then returns the child's result or
raises the child's exception, as if the function had run here.

How the voxels travel.  Through the pipe, the parent would receive them into brand-new memory,
and on a virtual machine each fresh page can cost the host a page too (a 100-slice CT and its
crops: 78 MB, 0.2-0.5 s of the parent's time).  So the parent opens an anonymous shared-memory
file (``memfd_create``) before forking; the child copies the raw buffers into it (in its own
time, while the parent still imports) and sends only their places through the pipe; the parent
maps the file copy-on-write and the arrays use the pages the child filled.  Where no such file
can be made the buffers go through the pipe as before.

When.  Only where forking is safe and pays: Linux, torch not imported yet (otherwise there is
nothing to overlap), and a single thread (forking a multi-threaded process can deadlock the
child).  Elsewhere :func:`start` returns None and the caller loads in-process, as it does inside
Slicer, whose Qt process is never forked.  A child that dies without an answer (killed, out of
memory) makes :meth:`Prefetch.result` load in-process instead, with a log line.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<Q")
"""Every message part is preceded by its length in bytes (unsigned 64-bit, little endian)."""
_PLACE = struct.Struct("<QQ")
"""A buffer in the shared file: (offset, length) in bytes."""
_INLINE, _SHARED = 0, 1
"""How the raw buffers follow the pickled header: through the pipe, or placed in the shared file."""
_ALIGNMENT = mmap.ALLOCATIONGRANULARITY
"""Byte alignment of each buffer in the shared file: each is mapped on its own, so that the parent
lets go of one (the network's input) while keeping another (the image)."""


def can_fork() -> bool:
    """Whether :func:`start` would fork here (see the module docstring)."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork") and "torch" not in sys.modules
            and threading.active_count() == 1)


class Prefetch:
    """A forked child computing ``function(*args)``; :meth:`result` collects it (once)."""

    def __init__(self, function: Callable[..., Any], args: tuple) -> None:
        self._function, self._args = function, args
        self.seconds: float | None = None
        """The child's own seconds for ``function`` (None until :meth:`result`, or when it ran here)."""
        read_end, write_end = os.pipe()
        self._shared = _shared_file()
        for stream in (sys.stdout, sys.stderr):  # else the child's exit could write the parent's buffers twice
            stream.flush()
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (read_end, write_end, self._shared):
                if fd is not None:
                    os.close(fd)
            raise
        if self.pid == 0:  # pragma: no cover - runs in the child, which never returns
            os.close(read_end)
            _serve(write_end, self._shared, function, args)
        os.close(write_end)
        self._read_end = read_end

    def result(self) -> Any:
        """The child's return value (its exception raised here), or ``function(*args)`` computed here
        when the child died without an answer."""
        try:
            status, value, seconds = _receive(self._read_end, self._shared)
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            log.info("the input reader (process %d) gave no answer (%s); reading in this process", self.pid, error)
            self.cancel()
            return self._function(*self._args)
        finally:
            self._close()
        self.seconds = seconds
        if status == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child (when its result is not wanted any more)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._close()

    def _close(self) -> None:
        for name in ("_read_end", "_shared"):
            if getattr(self, name) is not None:
                os.close(getattr(self, name))
                setattr(self, name, None)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def start(function: Callable[..., Any], *args: Any) -> Prefetch | None:
    """``function(*args)`` started in a forked child, or None where :func:`can_fork` says no."""
    return Prefetch(function, args) if can_fork() else None


def _shared_file() -> int | None:
    """A new anonymous shared-memory file descriptor, or None where there is none to be had."""
    try:
        return os.memfd_create("cervixautoseg-prefetch", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return None


def _serve(write_end: int, shared: int | None, function: Callable[..., Any],
           args: tuple) -> None:  # pragma: no cover - child
    """The child: compute, send (status, value, seconds), leave without running any exit handler."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    code = 0
    try:
        started = time.perf_counter()
        try:
            message = ("ok", function(*args), time.perf_counter() - started)
        except BaseException as error:  # noqa: BLE001 - every failure goes to the parent
            message = ("error", _picklable(error), time.perf_counter() - started)
        _send(write_end, message, shared)
    except BaseException:  # noqa: BLE001 - the parent sees EOF and reads in-process
        code = 1
    finally:
        os._exit(code)


def _picklable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling, else a RuntimeError with its one-line text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any exception type may refuse
        return RuntimeError(f"{type(error).__name__}: {error}")


def _send(fd: int, message: Any, shared: int | None = None) -> None:
    """``message`` pickled (protocol 5) through ``fd``; its raw buffers placed in the ``shared`` file
    when there is one (and they fit), else through ``fd`` after the header."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    places = _place_in(shared, raws) if shared is not None and raws else None
    _write_all(fd, _LENGTH.pack(len(raws)) + _LENGTH.pack(_INLINE if places is None else _SHARED))
    _write_all(fd, _LENGTH.pack(len(header)))
    _write_all(fd, header)
    for index, raw in enumerate(raws):
        if places is None:
            _write_all(fd, _LENGTH.pack(raw.nbytes))
            _write_all(fd, raw)
        else:
            _write_all(fd, _PLACE.pack(*places[index]))


def _place_in(shared: int, raws: list[memoryview]) -> list[tuple[int, int]] | None:
    """Copy ``raws`` into the ``shared`` file, each at an aligned offset: their (offset, length), or
    None when the file cannot hold them (no memory for it: the pipe then carries them)."""
    places, end = [], 0
    for raw in raws:
        offset = -(-end // _ALIGNMENT) * _ALIGNMENT
        places.append((offset, raw.nbytes))
        end = offset + raw.nbytes
    try:
        os.ftruncate(shared, max(end, 1))
        os.posix_fallocate(shared, 0, max(end, 1))  # a shortage of memory is an OSError here, not a SIGBUS below
        with mmap.mmap(shared, max(end, 1)) as view:
            for (offset, length), raw in zip(places, raws):
                view[offset:offset + length] = raw
    except (OSError, ValueError):
        return None
    return places


def _receive(fd: int, shared: int | None = None) -> Any:
    count, how = (_LENGTH.unpack(_read_exactly(fd, _LENGTH.size))[0] for _ in range(2))
    header = _read_exactly(fd, _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))[0])
    if how == _INLINE:
        buffers = [_read_exactly(fd, _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))[0]) for _ in range(count)]
        return pickle.loads(header, buffers=buffers)
    if shared is None:
        raise OSError("the reader placed its result in a shared file this process does not have")
    places = [_PLACE.unpack(_read_exactly(fd, _PLACE.size)) for _ in range(count)]
    # copy-on-write: the arrays read the child's pages and stay writable, the file is not changed
    buffers = [mmap.mmap(shared, length, access=mmap.ACCESS_COPY, offset=offset) if length else bytearray()
               for offset, length in places]
    return pickle.loads(header, buffers=buffers)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, size: int) -> bytearray:
    """``size`` bytes from ``fd`` into one writable buffer (numpy arrays then use it as it is)."""
    data = bytearray(size)
    view, done = memoryview(data), 0
    while done < size:
        got = os.readv(fd, [view[done:]])
        if got == 0:
            raise EOFError(f"the pipe closed after {done} of {size} bytes")
        done += got
    return data
