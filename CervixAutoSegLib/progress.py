"""Progress reporting and cancellation for long jobs (``segment``), in-process or across a pipe.

In-process (Python, Slicer module)
    :func:`CervixAutoSegLib.pipeline.segment` takes ``progress`` — a callable receiving one
    :class:`ProgressEvent` per step — and ``cancel`` — a callable returning True when the
    user asked to stop.  ``cancel`` is polled between steps (between network batches, between
    stages); when it returns True the job raises :class:`~CervixAutoSegLib.errors.Cancelled`
    and writes nothing.

Across a pipe (the protocol of ``cervixautoseg segment --progress-json``)
    The Slicer module runs the command line in a background process and reads its stdout.
    With ``--progress-json`` stdout carries **one JSON object per line and nothing else**::

        {"stage": "network", "fraction": 0.42, "message": "slices 96/180"}

    * ``stage``: one of :data:`STAGES` (``"done"`` last, once, on success).
    * ``fraction``: progress of the *whole job* in [0, 1], never decreasing.
    * ``message``: short human text for a status line.

    Errors still go to stderr as one line with a non-zero exit code; a reader stops at
    end of file and looks at the exit code.  :func:`parse_progress_line` decodes a line
    (and ignores anything that is not an event, so a stray print cannot break the GUI).
    Cancel a command-line job by terminating the process (SIGTERM/SIGINT): outputs are
    only moved into place at the very end, so an interrupted job leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from typing import TextIO

from .errors import Cancelled

STAGES = ("load", "preprocess", "network", "postprocess", "write", "done")
"""Stages of ``segment``, in order."""

STAGE_WEIGHTS: Mapping[str, float] = {
    "load": 0.07, "preprocess": 0.13, "network": 0.45, "postprocess": 0.05, "write": 0.30, "done": 0.0,
}
"""Share of the whole job's time per stage, to turn stage progress into job progress.

Rounded from ``cervixautoseg benchmark ct`` on a 512x512x100 DICOM CT (2-core CPU, bf16):
load 7 %, preprocess + model load 15 %, network 27-45 %, postprocess 5 %, writing (mostly
the RTSTRUCT contours) 20-45 %."""

_BAR_WIDTH = 30


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """One progress report: ``stage`` name, whole-job ``fraction`` in [0, 1], ``message``."""

    stage: str
    fraction: float
    message: str = ""

    def to_json_line(self) -> str:
        """The event as one line of the ``--progress-json`` protocol (no trailing newline)."""
        return json.dumps({"stage": self.stage, "fraction": round(self.fraction, 4), "message": self.message})


ProgressCallback = Callable[[ProgressEvent], None]
CancelCheck = Callable[[], bool]


def parse_progress_line(line: str) -> ProgressEvent | None:
    """Decode one stdout line of ``--progress-json``; None when it is not a progress event."""
    try:
        document = json.loads(line)
        return ProgressEvent(str(document["stage"]), float(document["fraction"]), str(document.get("message", "")))
    except (ValueError, TypeError, KeyError):
        return None


def check_cancelled(cancel: CancelCheck | None) -> None:
    """Raise :class:`Cancelled` when ``cancel`` says so (``None`` never cancels)."""
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


class StagedProgress:
    """Turns "stage X is y% done" into monotonic whole-job events and polls for cancel.

    >>> tracker = StagedProgress(callback, cancel)
    >>> tracker.start("network")            # fraction = sum of weights of earlier stages
    >>> tracker.update(0.5, "slices 50/100") # halfway through the network stage
    """

    def __init__(self, callback: ProgressCallback | None = None, cancel: CancelCheck | None = None,
                 weights: Mapping[str, float] = STAGE_WEIGHTS):
        self._callback = callback
        self._cancel = cancel
        self._weights = dict(weights)
        self._total = sum(self._weights.values()) or 1.0
        self._stage = ""
        self._stage_start = 0.0
        self._last = 0.0

    @property
    def stage(self) -> str:
        return self._stage

    def start(self, stage: str, message: str = "") -> None:
        """Enter ``stage`` (a key of the weights); emits an event and polls for cancel."""
        check_cancelled(self._cancel)
        self._stage = stage
        names = list(self._weights)
        earlier = names[: names.index(stage)] if stage in names else names
        self._stage_start = sum(self._weights[name] for name in earlier) / self._total
        self._emit(self._stage_start, message or stage)

    def update(self, stage_fraction: float, message: str = "") -> None:
        """Report ``stage_fraction`` (0..1) of the current stage; polls for cancel first."""
        check_cancelled(self._cancel)
        share = self._weights.get(self._stage, 0.0) / self._total
        self._emit(self._stage_start + share * min(max(stage_fraction, 0.0), 1.0), message)

    def finish(self, message: str = "done") -> None:
        """Final ``done`` event at fraction 1."""
        self._stage = "done"
        self._emit(1.0, message)

    def _emit(self, fraction: float, message: str) -> None:
        self._last = max(self._last, min(fraction, 1.0))
        if self._callback is not None:
            self._callback(ProgressEvent(self._stage, self._last, message))


class JsonLinesReporter:
    """Progress callback writing the ``--progress-json`` protocol to ``stream`` (stdout)."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream

    def __call__(self, event: ProgressEvent) -> None:
        stream = self._stream or sys.stdout
        stream.write(event.to_json_line() + "\n")
        stream.flush()


class TextProgressBar:
    """Progress callback drawing a plain-text bar on ``stream`` (stderr).

    On a terminal one line is redrawn in place (carriage return); into a file or pipe (batch logs) a
    line is written only when the stage changes, so logs stay short.
    """

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream
        self._line_open = False
        self._last_stage = ""

    def close(self) -> None:
        """End the bar's line (after an error, so the error message starts on its own line)."""
        if self._line_open:
            (self._stream or sys.stderr).write("\n")
            self._line_open = False

    def __call__(self, event: ProgressEvent) -> None:
        stream = self._stream or sys.stderr
        interactive = bool(getattr(stream, "isatty", lambda: False)())
        if not interactive and event.stage == self._last_stage:
            return
        self._last_stage = event.stage
        filled = int(event.fraction * _BAR_WIDTH + 0.5)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        line = f"[{bar}] {event.fraction * 100:5.1f}% {event.stage:<11} {event.message[:40]:<40}"
        if interactive:
            stream.write("\r" + line)
            self._line_open = True
            if event.stage == "done":
                self.close()
        else:
            stream.write(line.rstrip() + "\n")
        stream.flush()
