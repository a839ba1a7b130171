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
file (``memfd_create``) before forking; the child writes the raw buffers into it (``pwrite``, in
its own time, while the parent still imports) and sends only their places through the pipe; the parent
maps the file copy-on-write and the arrays use the pages the child filled.  Where no such file
can be made the buffers go through the pipe as before.

Afterwards.  Asked to (``keep``), the child stays: it keeps part of what it read (the image) and
runs later work handed to it with :meth:`Prefetch.submit`, such as writing the label files while
this process checks the result: two processes, so no GIL between them.  Its heap keeps what it
freed for those jobs (:mod:`.heap`: fresh pages are dear on a virtual machine).  The job's arguments
travel the other way the same way (a second shared file); answers to jobs are small and come
through the pipe.  The child leaves when this process closes the job pipe (:meth:`Prefetch.close`),
or dies with it (end of file on that pipe).  Shared files only ever grow: a buffer the receiver
still maps is never overwritten.

When.  Only where forking is safe and pays: Linux, torch not imported yet (otherwise there is
nothing to overlap), and a single thread (forking a multi-threaded process can deadlock the
child).  Elsewhere :func:`start` returns None and the caller loads in-process, as it does inside
Slicer, whose Qt process is never forked.  A child that dies without an answer (killed, out of
memory) makes :meth:`Prefetch.result` load in-process instead, with a log line.
"""

from __future__ import annotations

import importlib
import logging
import mmap
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as Pending
from typing import Any

from .heap import retained_heap

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


class ReaderLost(RuntimeError):
    """The child died (killed, out of memory) before answering a job."""


def can_fork() -> bool:
    """Whether :func:`start` would fork here (see the module docstring)."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork") and "torch" not in sys.modules
            and threading.active_count() == 1)


class SharedFile:
    """One direction's anonymous shared-memory file: buffers are appended at aligned offsets,
    never overwritten, so arrays the receiver maps from an earlier message never change."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.end = 0
        """Bytes in use (what the sending process placed so far)."""

    def place(self, raws: Sequence[memoryview]) -> list[tuple[int, int]] | None:
        """Copy ``raws`` in after what is there: their (offset, length), or None when the file cannot
        hold them (no memory for it: the pipe then carries them)."""
        places, end = [], self.end
        for raw in raws:
            offset = -(-end // _ALIGNMENT) * _ALIGNMENT
            places.append((offset, raw.nbytes))
            end = offset + raw.nbytes
        end = max(end, self.end + 1)
        try:
            # Written, not mapped: no page faults here for the file's fresh pages (26 MB of a CT label
            # map: 6,500), and a shortage of memory is an OSError of the write, never a SIGBUS.
            for (offset, _), raw in zip(places, raws):
                _write_all_at(self.fd, raw, offset)
            os.ftruncate(self.fd, end)
        except OSError:
            return None
        self.end = end
        return places

    def close(self) -> None:
        os.close(self.fd)


def _shared_file() -> SharedFile | None:
    """A new anonymous shared-memory file, or None where there is none to be had."""
    try:
        return SharedFile(os.memfd_create("cervixautoseg-prefetch", os.MFD_CLOEXEC))
    except (AttributeError, OSError):
        return None


class Prefetch:
    """A forked child computing ``function(*args)``; :meth:`result` collects it (once).

    With ``keep``, the child keeps ``keep(result)`` and serves :meth:`submit` afterwards, until
    :meth:`close`; without, it leaves once it answered.
    """

    def __init__(self, function: Callable[..., Any], args: tuple, keep: Callable[[Any], Any] | None = None) -> None:
        self._function, self._args, self._job = function, args, None
        self.seconds: float | None = None
        """The child's own seconds for ``function`` (None until :meth:`result`, or when it ran here)."""
        self.serving = False
        """True while the child waits for :meth:`submit` (after :meth:`result`, with ``keep``)."""
        self._fds: dict[str, Any] = {}
        try:
            self._fds.update(zip(("answers", "answers_in_child"), os.pipe()))
            if keep is not None:
                self._fds.update(zip(("jobs_in_child", "jobs"), os.pipe()))
            self._fds.update(answers_shared=_shared_file(), jobs_shared=_shared_file() if keep else None)
            for stream in (sys.stdout, sys.stderr):  # else the child's exit could write the parent's buffers twice
                stream.flush()
            self.pid = os.fork()
        except OSError:
            self._close_all()
            raise
        if self.pid == 0:  # pragma: no cover - runs in the child, which never returns
            for name in ("answers", "jobs"):
                self._close_fd(name)
            _serve(self._fds, function, args, keep)
        for name in ("answers_in_child", "jobs_in_child"):
            self._close_fd(name)

    def result(self) -> Any:
        """The child's return value (its exception raised here), or ``function(*args)`` computed here
        when the child died without an answer."""
        try:
            status, value, seconds = _receive(self._fds["answers"], self._fds["answers_shared"])
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            log.info("the input reader (process %d) gave no answer (%s); reading in this process", self.pid, error)
            self.cancel()
            return self._function(*self._args)
        finally:
            self._close_fd("answers_shared")  # the arrays keep their mappings
        self.seconds = seconds
        self.serving = status == "ok" and "jobs" in self._fds
        if not self.serving:
            self.close()
        if status == "error":
            raise value
        return value

    def submit(self, function: Callable[..., Any], *args: Any) -> Job:
        """``function(kept, *args)`` started in the child (``function`` a module-level one, ``args``
        picklable); one job at a time.  :class:`ReaderLost` when the child is gone."""
        if not self.serving or self._job is not None:
            raise RuntimeError("the reader process takes no job now")
        try:
            _send(self._fds["jobs"], (function, args), self._fds["jobs_shared"])
        except OSError as error:  # a broken pipe: the child died
            self.cancel()
            raise ReaderLost(f"the reader process {self.pid} is gone ({error})") from error
        self._job = Job(self)
        return self._job

    def cancel(self) -> None:
        """Stop the child now (its result or a job's is not wanted any more)."""
        self._kill()
        self.close()

    def close(self) -> None:
        """No more jobs: the child leaves (killed if a job is still running) and is waited for."""
        self.serving = False
        if self._job is not None:  # submitted and not collected
            self._kill()
        self._close_all()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def _kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _close_fd(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if isinstance(fd, SharedFile):
            fd.close()
        elif fd is not None:
            os.close(fd)

    def _close_all(self) -> None:
        for name in list(self._fds):
            self._close_fd(name)


class Job:
    """Work running in the child (:meth:`Prefetch.submit`); :meth:`result` collects it, like a future's."""

    def __init__(self, owner: Prefetch) -> None:
        self._owner = owner

    def result(self, timeout: float | None = None) -> Any:
        """The job's return value (its exception raised here); ``concurrent.futures.TimeoutError``
        when it is not done within ``timeout`` seconds, :class:`ReaderLost` when the child died."""
        owner = self._owner
        fd = owner._fds.get("answers")
        if fd is None:
            raise ReaderLost("the reader process was stopped")
        if timeout is not None and not select.select([fd], [], [], timeout)[0]:
            raise Pending()
        try:
            status, value, _ = _receive(fd)
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            owner.cancel()
            raise ReaderLost(f"the reader process {owner.pid} died during its job ({error})") from error
        owner._job = None  # collected: the child waits for the next job
        if status == "error":
            raise value
        return value


def start(function: Callable[..., Any], *args: Any, shared_imports: Sequence[str] = (),
          keep: Callable[[Any], Any] | None = None) -> Prefetch | None:
    """``function(*args)`` started in a forked child, or None where :func:`can_fork` says no.

    ``shared_imports``: modules both processes need (the child to read, this process after the
    network), imported once before the fork instead of once in each process after it.
    ``keep``: what of the result the child keeps for later :meth:`Prefetch.submit` jobs (None:
    the child leaves once it answered).
    """
    if not can_fork():
        return None
    for name in shared_imports:
        importlib.import_module(name)
    return Prefetch(function, args, keep)


def _serve(fds: dict[str, Any], function: Callable[..., Any], args: tuple,
           keep: Callable[[Any], Any] | None) -> None:  # pragma: no cover - child
    """The child: compute, send (status, value, seconds), serve jobs when asked to keep something,
    leave without running any exit handler."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    code = 0
    try:
        with retained_heap():  # what the reading freed serves the later jobs (heap.py)
            message = _run(function, args)
            _send(fds["answers_in_child"], message, fds["answers_shared"])
            if fds.get("answers_shared") is not None:  # the parent maps what it needs; job answers use the pipe
                fds.pop("answers_shared").close()
            if keep is not None and message[0] == "ok":
                kept = keep(message[1])
                del message  # the rest of the result (the network's input) is the parent's now
                _serve_jobs(fds, kept)
    except BaseException:  # noqa: BLE001 - the parent sees EOF and reads in-process
        code = 1
    finally:
        os._exit(code)


def _serve_jobs(fds: dict[str, Any], kept: Any) -> None:  # pragma: no cover - child
    """Run each job ``(function, args)`` as ``function(kept, *args)`` until the job pipe closes."""
    while True:
        try:
            function, args = _receive(fds["jobs_in_child"], fds["jobs_shared"])
        except EOFError:
            return
        _send(fds["answers_in_child"], _run(function, (kept, *args)))


def _run(function: Callable[..., Any], args: tuple) -> tuple[str, Any, float]:
    """("ok", value, seconds) or ("error", the exception, seconds) of ``function(*args)``."""
    started = time.perf_counter()
    try:
        return "ok", function(*args), time.perf_counter() - started
    except BaseException as error:  # noqa: BLE001 - every failure goes to the parent
        return "error", _picklable(error), time.perf_counter() - started


def _picklable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling, else a RuntimeError with its one-line text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any exception type may refuse
        return RuntimeError(f"{type(error).__name__}: {error}")


def _send(fd: int, message: Any, shared: SharedFile | None = None) -> None:
    """``message`` pickled (protocol 5) through ``fd``; its raw buffers placed in the ``shared`` file
    when there is one (and they fit), else through ``fd`` after the header."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    places = shared.place(raws) if shared is not None and raws else None
    _write_all(fd, _LENGTH.pack(len(raws)) + _LENGTH.pack(_INLINE if places is None else _SHARED))
    _write_all(fd, _LENGTH.pack(len(header)))
    _write_all(fd, header)
    for index, raw in enumerate(raws):
        if places is None:
            _write_all(fd, _LENGTH.pack(raw.nbytes))
            _write_all(fd, raw)
        else:
            _write_all(fd, _PLACE.pack(*places[index]))


def _receive(fd: int, shared: SharedFile | None = None) -> Any:
    count, how = (_LENGTH.unpack(_read_exactly(fd, _LENGTH.size))[0] for _ in range(2))
    header = _read_exactly(fd, _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))[0])
    if how == _INLINE:
        buffers = [_read_exactly(fd, _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))[0]) for _ in range(count)]
        return pickle.loads(header, buffers=buffers)
    if shared is None:
        raise OSError("the sender placed its message in a shared file this process does not have")
    places = [_PLACE.unpack(_read_exactly(fd, _PLACE.size)) for _ in range(count)]
    # copy-on-write: the arrays read the sender's pages and stay writable, the file is not changed
    buffers = [mmap.mmap(shared.fd, length, access=mmap.ACCESS_COPY, offset=offset) if length else bytearray()
               for offset, length in places]
    return pickle.loads(header, buffers=buffers)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _write_all_at(fd: int, data: memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


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
