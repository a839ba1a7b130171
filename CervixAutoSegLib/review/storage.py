"""Grades that cannot be lost: a per-reviewer append-only JSON-lines log, fsynced per grade.

Layout inside a review folder::

    grades/<reviewer-slug>.jsonl           the log: one JSON object per line, appended only
    grades/<reviewer-slug>.snapshot.json   the replayed state after a prefix of the log (atomic)
    grades/<reviewer-slug>.lock            held (advisory lock) by the one process writing the log
    grades/<reviewer-slug>.jsonl.torn      bytes of incomplete last lines cut off the log (audit)

Rules:

* :meth:`ReviewerLog.append` writes one whole line with ``O_APPEND`` and returns only after
  ``fsync``: a grade the caller was told about survives a crash, a kill or a power cut.
* Every :data:`SNAPSHOT_EVERY` events (and on close) the state is written to the snapshot with
  :func:`~CervixAutoSegLib.atomic.write_text_atomic`, together with the length and SHA-256 of
  the log prefix it covers.  The log stays the truth: a snapshot that does not match its log
  (older copy, edited file) is ignored with a warning and the whole log is replayed.
* A last line without its newline is a write the process never finished (and so never
  confirmed): readers ignore it with a warning; the next writer moves it to ``.torn`` and
  truncates the log before appending.  A damaged line elsewhere is skipped with a warning.
* Each reviewer has a file of their own, so several reviewers grade one case at once without
  sharing a file; two processes of the *same* reviewer are refused by the lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import InputError

log = logging.getLogger(__name__)

LOG_DIR = "grades"
LOG_SUFFIX = ".jsonl"
SNAPSHOT_SUFFIX = ".snapshot.json"
LOCK_SUFFIX = ".lock"
TORN_SUFFIX = ".torn"
SNAPSHOT_EVERY = 50
"""Events between two snapshots: replaying 50 lines on reopen is instant, and one snapshot per 50
grades keeps the atomic rewrite (a few ms for thousands of grades) off the grading path."""
LOG_FORMAT_VERSION = 1
_SLUG_HASH_CHARS = 8


def reviewer_slug(reviewer: str) -> str:
    """A file-name-safe, collision-free name for ``reviewer`` ("Dr. Ana Lopez" → "Dr_Ana_Lopez-1a2b3c4d").

    ASCII letters, digits, '-' and '_' are kept (others become '_'); a hash of the exact name
    keeps two names that differ only in dropped characters apart.
    """
    name = reviewer.strip()
    if not name:
        raise InputError("the reviewer name is empty")
    kept = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in name)
    kept = "_".join(part for part in kept.split("_") if part)[:40] or "reviewer"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_SLUG_HASH_CHARS]
    return f"{kept}-{digest}"


def log_path(folder: str | Path, reviewer: str) -> Path:
    return Path(folder) / LOG_DIR / f"{reviewer_slug(reviewer)}{LOG_SUFFIX}"


def reviewer_logs(folder: str | Path) -> list[Path]:
    """Every reviewer log of a review folder, sorted."""
    return sorted((Path(folder) / LOG_DIR).glob(f"*{LOG_SUFFIX}"))


@dataclasses.dataclass
class Replay:
    """What a log holds: its header, the snapshot state it starts from, the events after it."""

    header: dict | None
    state: dict | None
    events: list[dict]
    complete_bytes: int
    """Length of the log up to its last complete line."""
    warnings: list[str]


def _snapshot_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(LOG_SUFFIX)] + SNAPSHOT_SUFFIX)


def read_log(path: str | Path) -> Replay:
    """Replay a log read-only (no lock, no repair): snapshot state + events after it.

    Never raises for damaged content; every problem becomes a warning (also logged).
    """
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    complete = data.rfind(b"\n") + 1
    warnings = []
    if complete < len(data):
        warnings.append(f"{path}: ignored an incomplete last line ({len(data) - complete} bytes): its writer stopped "
                        "mid-line, so that grade was never confirmed")
    state, start = _usable_snapshot(path, data, complete, warnings)
    header, events, offset = None, [], 0
    for number, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
        line_start, offset = offset, offset + len(line) + 1
        event = _parse(line, path, number, warnings) if line.strip() else None
        if event is None:
            continue
        if event.get("op") == "open" and header is None:
            header = event
        elif line_start >= start:  # lines before ``start`` are in the snapshot's state
            events.append(event)
    for warning in warnings:
        log.warning("%s", warning)
    return Replay(header, state, events, complete, warnings)


def _parse(line: bytes, path: Path, number: int, warnings: list[str]) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        warnings.append(f"{path}: line {number} is damaged and was skipped")
        return None
    if not isinstance(event, dict):
        warnings.append(f"{path}: line {number} is not a log entry and was skipped")
        return None
    return event


def _usable_snapshot(path: Path, data: bytes, complete: int, warnings: list[str]) -> tuple[dict | None, int]:
    """(state, log offset it covers) of the snapshot when it matches the log; else (None, 0)."""
    snapshot = _snapshot_path(path)
    if not snapshot.exists():
        return None, 0
    try:
        document = json.loads(snapshot.read_text(encoding="utf-8"))
        offset = int(document["log_bytes"])
        matches = offset <= complete and hashlib.sha256(data[:offset]).hexdigest() == document["log_sha256"]
        state = document["state"]
    except (OSError, ValueError, KeyError, TypeError):
        matches, offset, state = False, 0, None
    if not matches or not isinstance(state, dict):
        warnings.append(f"{snapshot} does not match its log; the whole log was replayed instead")
        return None, 0
    return state, offset


# ------------------------------------------------------------------ the writer
class ReviewerLog:
    """One reviewer's log, open for appending by this process (holds the lock until :meth:`close`).

    Opening repairs a torn last line (moved to ``.torn``) and writes the header line of a new log.
    """

    def __init__(self, path: str | Path, reviewer: str, review_id: str):
        self.path = Path(path)
        self.reviewer, self.review_id = reviewer, review_id
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self.events_since_snapshot = 0

    def open(self) -> Replay:
        """Lock, repair, replay; returns what the log held (header written for a new log)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _acquire_lock(self.path.with_name(self.path.name + LOCK_SUFFIX), self.reviewer)
        try:
            self._cut_torn_tail()
            replay = read_log(self.path)
            self._check_owner(replay.header)
            new = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
            if new:
                self.append({"op": "open", "format_version": LOG_FORMAT_VERSION, "reviewer": self.reviewer,
                             "review_id": self.review_id})
                _fsync_folder(self.path.parent)  # the new file's name is durable too
            self.events_since_snapshot = len(replay.events)
            return replay
        except BaseException:
            self.close()
            raise

    def append(self, event: Mapping[str, Any]) -> None:
        """Write ``event`` as one line and fsync: when this returns, the event is on disk."""
        if self._fd is None:
            raise RuntimeError("the log is not open")
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):  # os.write may write less than asked (signals, pipes)
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)
        except OSError:
            # Disk full, quota, I/O error: take back the part of the line that got written, or the
            # next grade would be glued to it and both lost on replay.  The caller says NOT SAVED.
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise
        self.events_since_snapshot += 1

    def snapshot_due(self) -> bool:
        return self.events_since_snapshot >= SNAPSHOT_EVERY

    def write_snapshot(self, state: Mapping[str, Any]) -> None:
        """Atomically record ``state`` as the result of the whole log so far."""
        if self._fd is None:
            return
        data = self.path.read_bytes()
        document = {"format_version": LOG_FORMAT_VERSION, "reviewer": self.reviewer, "review_id": self.review_id,
                    "log_bytes": len(data), "log_sha256": hashlib.sha256(data).hexdigest(), "state": state}
        write_text_atomic(_snapshot_path(self.path), json.dumps(document, ensure_ascii=False) + "\n")
        self.events_since_snapshot = 0

    def close(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)  # closing the lock file's descriptor releases the lock
                setattr(self, name, None)

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete == len(data):
            return
        log.warning("%s: an incomplete last line (%d bytes) was never confirmed; moved to %s%s", self.path,
                    len(data) - complete, self.path.name, TORN_SUFFIX)
        with open(self.path.with_name(self.path.name + TORN_SUFFIX), "ab") as torn:
            torn.write(data[complete:] + b"\n")
            torn.flush()
            os.fsync(torn.fileno())
        with open(self.path, "rb+") as stream:
            stream.truncate(complete)
            stream.flush()
            os.fsync(stream.fileno())

    def _check_owner(self, header: Mapping[str, Any] | None) -> None:
        if header is None:
            return
        if header.get("review_id") not in (None, self.review_id):
            raise InputError(f"{self.path} belongs to another review (copied between folders?); it was not changed")
        if int(header.get("format_version", 1)) > LOG_FORMAT_VERSION:
            raise InputError(f"{self.path} was written by a newer CervixAutoSeg: update before grading")


def _fsync_folder(folder: Path) -> None:
    """Make a new directory entry durable (POSIX; Windows has no directory fsync)."""
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _acquire_lock(path: Path, reviewer: str) -> int:
    """An exclusive advisory lock on ``path`` (released when its descriptor closes, also on a kill)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock(fd)
    except OSError:
        os.close(fd)
        raise InputError(f"{reviewer}'s grades of this review are open in another program (Slicer or another "
                         "command); close it first") from None
    return fd


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
