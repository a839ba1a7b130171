"""Run the segmentation in a background process and poll it, so Slicer never freezes.

The module widget starts ``python -m CervixAutoSegLib segment ... --progress-json`` with
:class:`BackgroundJob` and calls :meth:`BackgroundJob.poll` from a ``qt.QTimer``.  The
child's stdout carries one JSON progress object per line (:mod:`.progress`); its last
stderr line is the one-line error of a failed run.

Cancel kills the whole process tree, not only the direct child: torch worker threads
are in-process, but a DICOM decoder or a future helper process must not survive.

* POSIX: the child leads a new session (``start_new_session``); cancel sends SIGTERM
  to the group, and SIGKILL if it is still alive after :data:`TERMINATE_GRACE_SECONDS`.
* Windows: ``taskkill /T /F`` on the child's PID.

Reading is done by two daemon threads that only move lines into queues; :meth:`poll`
never blocks, which is what a GUI timer needs.
"""

from __future__ import annotations

import enum
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .progress import ProgressEvent, parse_progress_line

TERMINATE_GRACE_SECONDS = 3.0
"""Time a cancelled job gets to exit on SIGTERM before the group is killed."""
STREAM_GRACE_SECONDS = 2.0
"""After the child exits, how long its pipes may stay open (held by a stray descendant)
before the job is declared over and the process group killed."""
STDERR_LINES_KEPT = 50
"""Tail of stderr kept for the error message and the log."""
POLL_SLEEP_SECONDS = 0.05
"""Sleep between polls of :meth:`BackgroundJob.wait` (headless use)."""
SLICER_PYTHON = "PythonSlicer"
"""Slicer's Python launcher (sets up Slicer's environment for a child process)."""

IS_WINDOWS = sys.platform.startswith("win")


class JobState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# ----------------------------------------------------------------- commands
def python_executable() -> str:
    """Slicer's ``PythonSlicer`` launcher when there is one next to us, else this interpreter."""
    beside = Path(sys.executable).with_name(SLICER_PYTHON + (".exe" if IS_WINDOWS else ""))
    if beside.is_file():
        return str(beside)
    return shutil.which(SLICER_PYTHON) or sys.executable


def package_parent() -> Path:
    """The folder holding the ``CervixAutoSegLib`` package (put on the child's PYTHONPATH)."""
    return Path(__file__).resolve().parents[1]


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the child: our package importable, unbuffered output."""
    environment = dict(os.environ if base is None else base)
    paths = [str(package_parent())] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive as they are printed
    return environment


def segment_command(input_path: str | Path, out_dir: str | Path, *, model: str = "auto", device: str = "auto",
                    series_uid: str | None = None, python: str | None = None,
                    options: Mapping[str, object] | None = None, allow_non_t2: bool = False) -> list[str]:
    """Argument list running ``cervixautoseg segment`` with the JSON progress protocol.

    ``options``: inference options to pass on (``flip_tta``, ``precision``, ``batch_size``;
    a None value or a missing key leaves the model family's default).  ``allow_non_t2``: the
    user's explicit override of the T2-weighting check (``--allow-non-t2``).
    """
    command = [python or python_executable(), "-m", "CervixAutoSegLib", "segment", str(input_path),
               "--out", str(out_dir), "--model", model, "--device", device, "--progress-json"]
    if series_uid:
        command += ["--series", series_uid]
    if allow_non_t2:
        command.append("--allow-non-t2")
    return command + inference_arguments(options or {})


def inference_arguments(options: Mapping[str, object]) -> list[str]:
    """``segment`` arguments for the inference options the panel sets (see :func:`segment_command`)."""
    unknown = set(options) - {"flip_tta", "precision", "batch_size"}
    if unknown:
        raise ValueError(f"unknown inference options {sorted(unknown)}")
    arguments = []
    if options.get("flip_tta") is not None:
        arguments.append("--flip-tta" if options["flip_tta"] else "--no-flip-tta")
    if options.get("precision") is not None:
        arguments += ["--precision", str(options["precision"])]
    if options.get("batch_size"):
        arguments += ["--batch-size", str(int(options["batch_size"]))]  # type: ignore[call-overload]
    return arguments


# --------------------------------------------------------------------- job
def _pump(stream, sink: queue.Queue[str | None]) -> None:
    """Move lines from a pipe into a queue; None marks end of file."""
    try:
        for line in iter(stream.readline, ""):
            sink.put(line.rstrip("\r\n"))
    finally:
        sink.put(None)
        stream.close()


def kill_process_tree(process: subprocess.Popen, hard: bool) -> None:
    """Terminate (``hard=False``) or kill the process and everything it started."""
    if IS_WINDOWS:  # pragma: no cover - exercised on Windows only
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return
    try:
        os.killpg(process.pid, signal.SIGKILL if hard else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


class BackgroundJob:
    """One child process whose progress is polled.

    >>> job = BackgroundJob(segment_command(nrrd_path, out_dir, model="ct"))
    >>> job.start()
    >>> events = job.poll()          # from a timer; never blocks
    >>> job.state, job.error_message
    """

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, clock: Callable[[], float] = time.monotonic):
        self.command = list(command)
        self.env = dict(env) if env is not None else child_environment()
        self.cwd = cwd
        self.state = JobState.NOT_STARTED
        self.returncode: int | None = None
        self.last_event: ProgressEvent | None = None
        self.output_lines: list[str] = []
        """stdout lines that were not progress events (kept for the log)."""
        self.stderr_lines: list[str] = []
        self._clock = clock
        self._process: subprocess.Popen | None = None
        self._stdout: queue.Queue = queue.Queue()
        self._stderr: queue.Queue = queue.Queue()
        self._open_streams = 0
        self._kill_deadline = 0.0
        self._killed = False
        self._exited_at: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # --------------------------------------------------------------- control
    def start(self) -> None:
        if self.state is not JobState.NOT_STARTED:
            raise RuntimeError("a job runs once")
        options: dict = {}
        if IS_WINDOWS:  # pragma: no cover
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            options["start_new_session"] = True
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=self.env, cwd=self.cwd, **options,
        )
        self.started_at = self._clock()
        self.state = JobState.RUNNING
        for stream, sink in ((self._process.stdout, self._stdout), (self._process.stderr, self._stderr)):
            threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
        self._open_streams = 2

    def cancel(self) -> None:
        """Ask the process tree to stop; :meth:`poll` escalates to a kill after the grace time."""
        if self.state is not JobState.RUNNING or self._process is None:
            return
        self.state = JobState.CANCELLING
        kill_process_tree(self._process, hard=False)
        self._kill_deadline = self._clock() + TERMINATE_GRACE_SECONDS

    # --------------------------------------------------------------- polling
    def poll(self) -> list[ProgressEvent]:
        """New progress events since the last call; updates :attr:`state` when the child ends."""
        events = self._drain()
        if self._process is None or self.state.finished:
            return events
        now = self._clock()
        if self.state is JobState.CANCELLING and not self._killed and now >= self._kill_deadline:
            kill_process_tree(self._process, hard=True)  # whatever survived SIGTERM, leader or not
            self._killed = True
        if self._process.poll() is None:
            return events
        if self._exited_at is None:
            self._exited_at = now
        if self._open_streams and now - self._exited_at < STREAM_GRACE_SECONDS:
            return events  # its last lines are still in the pipes
        if self._open_streams or self.state is JobState.CANCELLING:
            # A descendant still holds the pipes or ignored SIGTERM: the job is over, so end it.
            kill_process_tree(self._process, hard=True)
        self.returncode = self._process.returncode
        self.finished_at = now
        if self.state is JobState.CANCELLING:
            self.state = JobState.CANCELLED
        else:
            self.state = JobState.SUCCEEDED if self.returncode == 0 else JobState.FAILED
        return events

    def wait(self, timeout: float | None = None, on_event: Callable[[ProgressEvent], None] | None = None) -> JobState:
        """Poll until the job ends (headless use); ``timeout`` in seconds cancels it when exceeded."""
        deadline = None if timeout is None else self._clock() + timeout
        while not self.state.finished:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if deadline is not None and self._clock() > deadline and self.state is JobState.RUNNING:
                self.cancel()
            time.sleep(POLL_SLEEP_SECONDS)
        return self.state

    def _drain(self) -> list[ProgressEvent]:
        events = []
        for sink, is_stdout in ((self._stdout, True), (self._stderr, False)):
            while True:
                try:
                    line = sink.get_nowait()
                except queue.Empty:
                    break
                if line is None:
                    self._open_streams -= 1
                    continue
                if not is_stdout:
                    self.stderr_lines = (self.stderr_lines + [line])[-STDERR_LINES_KEPT:]
                    continue
                event = parse_progress_line(line)
                if event is None:
                    self.output_lines.append(line)
                else:
                    self.last_event = event
                    events.append(event)
        return events

    # --------------------------------------------------------------- results
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def elapsed(self) -> float:
        """Seconds since start (until the end once finished)."""
        if self.started_at is None:
            return 0.0
        return (self.finished_at if self.finished_at is not None else self._clock()) - self.started_at

    @property
    def error_message(self) -> str:
        """The child's one-line reason (last non-empty stderr line), or the exit code."""
        for line in reversed(self.stderr_lines):
            text = line.split("\r")[-1].strip()  # a redrawn text progress bar leaves \r-joined frames
            if text:
                return text
        return f"exited with code {self.returncode}" if self.returncode else ""
