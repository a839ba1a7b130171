"""Storage that cannot lose work (issue 16, item 2): fsync per grade, replay, torn last line, snapshots,
several reviewers at once, one writer per reviewer — and a process SIGKILLed at random moments while it
grades, 20 times, losing nothing it had confirmed."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from review_cases import tiny_review

from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.review import storage
from CervixAutoSegLib.review.grades import Grade
from CervixAutoSegLib.review.navigation import Stop
from CervixAutoSegLib.review.session import ReviewSession, folder_records, read_manifest

KILL_TRIALS = 20
MAX_KILL_DELAY_S = 0.2

OPERATIONS = """
import random


def grading_ops(seed, items, count=100_000):
    \"\"\"A reproducible stream of ("grade", item, slice, grade, comment) and ("undo",) operations.\"\"\"
    rng = random.Random(seed)
    for n in range(count):
        if rng.random() < 0.1:
            yield ("undo",)
        else:
            item = rng.choice(items)
            grade = rng.choice(("acceptable", "minor", "major", "unacceptable", "not_assessable"))
            yield ("grade", item.id, rng.choice(item.slices), grade, f"note {seed}-{n}")
"""
exec(OPERATIONS)  # the parent replays exactly the operations the child performs
GRADING_CHILD = OPERATIONS + """
import sys
from CervixAutoSegLib.review.session import ReviewSession
session = ReviewSession(sys.argv[1], sys.argv[2])
print("ready", flush=True)
for op in grading_ops(int(sys.argv[3]), session.manifest.items):
    if op[0] == "undo":
        session.undo()
    else:
        session.grade(*op[1:])
    print("confirmed", flush=True)  # only after the call returned, i.e. after fsync
"""
"""A process that grades in a loop and says so after each grade returns (the SIGKILL test's victim)."""


@pytest.fixture
def review(tmp_path):
    return tiny_review(tmp_path / "review")


def test_each_grade_is_fsynced_before_grade_returns(review, monkeypatch):
    synced = []
    real_fsync = os.fsync
    with ReviewSession(review, "Dr A") as session:
        log_fd = session._log._fd
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
        session.grade("Bladder", 5, "minor")
        assert synced == [log_fd]  # synced before returning, on the log itself
        assert json.loads(storage.log_path(review, "Dr A").read_bytes().splitlines()[-1])["grade"] == "minor"


def test_reopening_replays_grades_undo_and_the_resume_point(review):
    with ReviewSession(review, "Dr A") as session:
        session.grade("Bladder", 5, "minor", "edge at the dome")
        session.grade("Bladder", 5, "major")  # regraded
        session.grade("Rectum", 9, Grade.ACCEPTABLE)
        assert session.undo() == Stop("Rectum", 9)
        session.grade("Rectum", 10, "unacceptable")
    with ReviewSession(review, "Dr A") as session:
        assert session.grade_at(Stop("Bladder", 5)) is Grade.MAJOR
        assert session.grade_at(Stop("Rectum", 9)) is None
        assert session.last_stop == Stop("Rectum", 10)
        assert session.undo() == Stop("Rectum", 10) and session.undo() == Stop("Bladder", 5)
        assert session.grade_at(Stop("Bladder", 5)) is Grade.MINOR and session.comment_at(Stop("Bladder", 5)) == \
            "edge at the dome"


def test_a_torn_last_line_is_ignored_with_a_warning_and_moved_aside_by_the_next_writer(review, caplog):
    with ReviewSession(review, "Dr A") as session:
        session.grade("Bladder", 5, "minor")
    path = storage.log_path(review, "Dr A")
    with open(path, "ab") as stream:
        stream.write(b'{"op":"grade","item":"Bladder","slice":6,"gr')  # killed mid-write
    caplog.set_level(logging.WARNING)
    records = folder_records(review)  # a reader: ignores it, changes nothing
    assert [(r.slice_index, r.grade) for r in records] == [(5, Grade.MINOR)]
    assert "incomplete last line" in caplog.text and path.read_bytes().endswith(b'"gr')
    with ReviewSession(review, "Dr A") as session:  # the next writer cuts it off before appending
        session.grade("Bladder", 7, "acceptable")
    assert path.read_bytes().endswith(b"\n") and (path.parent / (path.name + ".torn")).read_bytes().startswith(b'{"op')
    assert sorted(r.slice_index for r in folder_records(review)) == [5, 7]


def test_a_damaged_line_inside_the_log_is_skipped_with_a_warning(review, caplog):
    with ReviewSession(review, "Dr A") as session:
        session.grade("Bladder", 5, "minor")
        session.grade("Bladder", 6, "major")
    path = storage.log_path(review, "Dr A")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"not json\n" + b"".join(lines[1:]))
    caplog.set_level(logging.WARNING)
    assert sorted(r.slice_index for r in folder_records(review)) == [5, 6]
    assert "line 2 is damaged" in caplog.text


def test_snapshots_are_written_now_and_then_and_a_stale_one_is_not_trusted(review, monkeypatch, caplog):
    monkeypatch.setattr(storage, "SNAPSHOT_EVERY", 5)
    with ReviewSession(review, "Dr A") as session:
        for k in range(4, 16):
            session.grade("Bladder", k, "acceptable")
        snapshot = storage.log_path(review, "Dr A").with_name(storage.reviewer_slug("Dr A") + storage.SNAPSHOT_SUFFIX)
        assert snapshot.exists()
        covered = json.loads(snapshot.read_text())["log_bytes"]
        assert 0 < covered < storage.log_path(review, "Dr A").stat().st_size  # 10 of 12 grades, then 2 more
    replay = storage.read_log(storage.log_path(review, "Dr A"))
    assert replay.state is not None and len(replay.state["grades"]) == 12 and replay.events == []  # closed: fresh
    # A snapshot that no longer matches its log (an old copy put back) is ignored: the log is the truth.
    document = json.loads(snapshot.read_text())
    document["state"]["grades"] = []
    document["log_sha256"] = "0" * 64
    snapshot.write_text(json.dumps(document))
    caplog.set_level(logging.WARNING)
    assert len(folder_records(review)) == 12 and "does not match its log" in caplog.text


def test_several_reviewers_grade_one_case_at_once_in_files_of_their_own(review):
    a, b = ReviewSession(review, "Dr A"), ReviewSession(review, "Dr Ana Lopez")
    try:
        a.grade("Bladder", 5, "minor")
        b.grade("Bladder", 5, "unacceptable")
        a.grade("Rectum", 3, "acceptable")
    finally:
        a.close()
        b.close()
    assert len(storage.reviewer_logs(review)) == 2
    assert sorted((r.reviewer, r.structure, r.grade.value) for r in folder_records(review)) == [
        ("Dr A", "Bladder", "minor"), ("Dr A", "Rectum", "acceptable"), ("Dr Ana Lopez", "Bladder", "unacceptable")]


def test_the_same_reviewer_cannot_write_from_two_programs(review):
    with ReviewSession(review, "Dr A"):
        with pytest.raises(InputError, match="open in another program"):
            ReviewSession(review, "Dr A")
    ReviewSession(review, "Dr A").close()  # released on close


def test_reviewer_slugs_are_safe_and_distinct():
    assert storage.reviewer_slug("Dr. Ana López/../x").startswith("Dr_Ana_L_pez_x-")
    assert storage.reviewer_slug("A B") != storage.reviewer_slug("A_B")
    with pytest.raises(InputError):
        storage.reviewer_slug("  ")


def test_a_slice_outside_the_image_or_an_unknown_structure_is_refused(review):
    with ReviewSession(review, "Dr A") as session:
        with pytest.raises(InputError, match="0 to 29"):
            session.grade("Bladder", 30, "minor")
        with pytest.raises(InputError, match="no structure 'Liver'"):
            session.grade("Liver", 3, "minor")
        with pytest.raises(InputError, match="unknown grade"):
            session.grade("Bladder", 3, "fine")
        assert session.records() == []


# ------------------------------------------------------------------ SIGKILL at random moments
class Model:
    """The expected grades: the operations applied to a dict and an undo stack (independent of the code)."""

    def __init__(self):
        self.grades, self.stack = {}, []

    def apply(self, op):
        if op[0] == "grade":
            key = (op[1], op[2])
            self.stack.append((key, self.grades.get(key)))
            self.grades[key] = (op[3], op[4])
        elif self.stack:
            key, previous = self.stack.pop()
            if previous is None:
                del self.grades[key]
            else:
                self.grades[key] = previous

    def copy(self):
        other = Model()
        other.grades, other.stack = dict(self.grades), list(self.stack)
        return other


def kill_while_grading(review: Path, reviewer: str, seed: int, delay_s: float) -> int:
    """Start a grading process, SIGKILL it after ``delay_s``; the number of operations it confirmed."""
    child = subprocess.Popen([sys.executable, "-c", GRADING_CHILD, str(review), reviewer, str(seed)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not lines and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert lines[:1] == ["ready\n"], child.stderr.read() if child.poll() is not None else "child not ready"
    time.sleep(delay_s)
    child.send_signal(signal.SIGKILL)
    child.wait()
    reader.join(timeout=10)  # what it printed before dying is confirmed too
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return sum(1 for line in lines if line == "confirmed\n")


def check_reopened(review: Path, reviewer: str, model: Model, ops) -> Model:
    """Reopen after a kill: the grades are the confirmed ones, or those plus the one in flight."""
    with_next = model.copy()
    with_next.apply(next(ops))  # the operation in flight may have reached the disk, unconfirmed
    with ReviewSession(review, reviewer) as session:  # reopening replays (and repairs a torn tail)
        found = {key: entry[:2] for key, entry in session.state.grades.items()}
        assert found in (model.grades, with_next.grades), f"{reviewer}: confirmed grades lost or changed"
        model = model if found == model.grades else with_next
        assert [key for key, _ in session.state.history] == [key for key, _ in model.stack]
    return model


def test_processes_killed_at_random_moments_while_grading_lose_no_confirmed_grade(review):
    """Two reviewers' grading processes at a time (files of their own), each killed at a random moment."""
    rng = random.Random(16)
    items = read_manifest(review).items
    reviewers = ("Dr K1", "Dr K2")
    models = {reviewer: Model() for reviewer in reviewers}
    kills = confirmed_total = 0
    for trial in range(KILL_TRIALS // len(reviewers)):
        seeds = {reviewer: 1000 + 10 * trial + index for index, reviewer in enumerate(reviewers)}
        results: dict[str, int] = {}
        threads = [threading.Thread(target=lambda r=r: results.__setitem__(
            r, kill_while_grading(review, r, seeds[r], rng.uniform(0.0, MAX_KILL_DELAY_S)))) for r in reviewers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for reviewer in reviewers:
            ops = grading_ops(seeds[reviewer], items)  # noqa: F821 - defined by exec(OPERATIONS)
            for _ in range(results[reviewer]):
                models[reviewer].apply(next(ops))
            models[reviewer] = check_reopened(review, reviewer, models[reviewer], ops)
            kills, confirmed_total = kills + 1, confirmed_total + results[reviewer]
    assert kills >= 20 and confirmed_total > kills  # the kills landed while grading, not before it started


def test_a_full_disk_saves_nothing_half_and_the_next_grade_is_whole(review, monkeypatch):
    from CervixAutoSegLib.review.controller import ReviewController

    controller = ReviewController()
    controller.open(review, "Dr A")
    real_write = os.write

    def disk_full(fd, data):  # half the line lands, then ENOSPC
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    view = controller.grade("minor")
    assert view.status.startswith("NOT SAVED:") and controller.session.records() == []
    monkeypatch.setattr(os, "write", real_write)
    controller.grade("major")
    controller.close()
    records = folder_records(review)
    assert [(r.slice_index, r.grade) for r in records] == [(3, Grade.MAJOR)]


def test_an_entry_that_is_not_a_grade_is_skipped_with_a_warning(review, caplog):
    with ReviewSession(review, "Dr A") as session:
        session.grade("Bladder", 5, "minor")
    with open(storage.log_path(review, "Dr A"), "ab") as stream:
        stream.write(b'{"op":"grade","item":"Bladder"}\n')  # valid JSON, no slice
    caplog.set_level(logging.WARNING)
    with ReviewSession(review, "Dr A") as session:
        assert len(session.records()) == 1 and "not a grade was skipped" in caplog.text

