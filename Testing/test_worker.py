"""worker: a real child process, its JSON progress, failure and cancel (whole process tree)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from CervixAutoSegLib.worker import (
    BackgroundJob,
    JobState,
    child_environment,
    package_parent,
    segment_command,
)

WAIT_LIMIT_SECONDS = 60.0
"""Upper bound for a fake job on a loaded 2-core machine; a safety net, not a measurement."""


def python_job(script: str, *args: str) -> BackgroundJob:
    return BackgroundJob([sys.executable, "-c", textwrap.dedent(script), *args])


def test_progress_events_arrive_in_order_and_success_is_reported():
    job = python_job(
        """
        import json, sys
        print("a stray line that is not progress")
        for stage, fraction in (("load", 0.0), ("network", 0.5), ("done", 1.0)):
            print(json.dumps({"stage": stage, "fraction": fraction, "message": stage + " msg"}), flush=True)
        """
    )
    job.start()
    seen = []
    assert job.wait(WAIT_LIMIT_SECONDS, on_event=seen.append) is JobState.SUCCEEDED
    assert [(e.stage, e.fraction, e.message) for e in seen] == [
        ("load", 0.0, "load msg"), ("network", 0.5, "network msg"), ("done", 1.0, "done msg")]
    assert job.returncode == 0 and job.output_lines == ["a stray line that is not progress"]
    assert job.error_message == ""


def test_failure_reports_the_last_stderr_line():
    job = python_job(
        """
        import sys
        sys.stderr.write("\\r[####      ] 40%\\rcervixautoseg segment: error: no MR model is installed\\n")
        sys.exit(2)
        """
    )
    job.start()
    assert job.wait(WAIT_LIMIT_SECONDS) is JobState.FAILED
    assert job.returncode == 2
    assert job.error_message == "cervixautoseg segment: error: no MR model is installed"


def test_poll_never_blocks_while_the_child_is_silent(tmp_path):
    go = tmp_path / "go"
    job = python_job(
        """
        import pathlib, sys, time
        while not pathlib.Path(sys.argv[1]).exists():
            time.sleep(0.02)
        """,
        str(go),
    )
    job.start()
    try:
        for _ in range(5):
            assert job.poll() == [] and job.state is JobState.RUNNING
    finally:
        go.touch()
    assert job.wait(WAIT_LIMIT_SECONDS) is JobState.SUCCEEDED


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX process groups")
@pytest.mark.parametrize("ignore_sigterm", ["none", "both", "grandchild"])
def test_cancel_kills_the_whole_process_tree(tmp_path, ignore_sigterm):
    pid_file = tmp_path / "grandchild.pid"
    job = python_job(
        """
        import json, signal, subprocess, sys, time
        ignore = sys.argv[2]
        grandchild = [sys.executable, "-c",
                      "import signal, time\\n"
                      + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" if ignore != "none" else "")
                      + "time.sleep(600)"]
        child = subprocess.Popen(grandchild)  # inherits our stdout/stderr pipes
        open(sys.argv[1], "w").write(str(child.pid))
        if ignore == "both":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(json.dumps({"stage": "network", "fraction": 0.3, "message": "busy"}), flush=True)
        time.sleep(600)
        """,
        str(pid_file), ignore_sigterm,
    )
    job.start()
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while job.last_event is None and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert job.last_event is not None and job.last_event.stage == "network"
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)

    job.cancel()
    assert job.state is JobState.CANCELLING
    assert job.wait(WAIT_LIMIT_SECONDS) is JobState.CANCELLED
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(job.pid) and not _alive(grandchild)


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX process groups")
def test_a_finished_job_ends_even_when_a_stray_descendant_holds_its_pipes(tmp_path):
    pid_file = tmp_path / "stray.pid"
    job = python_job(
        """
        import json, subprocess, sys
        stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # inherits the pipes
        open(sys.argv[1], "w").write(str(stray.pid))
        print(json.dumps({"stage": "done", "fraction": 1.0, "message": "done"}), flush=True)
        """,
        str(pid_file),
    )
    job.start()
    assert job.wait(WAIT_LIMIT_SECONDS) is JobState.SUCCEEDED
    assert job.last_event is not None and job.last_event.stage == "done"
    stray = int(pid_file.read_text())
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while _alive(stray) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(stray)


def test_segment_command_runs_our_cli_with_the_json_protocol(tmp_path):
    command = segment_command(tmp_path / "in.nrrd", tmp_path / "out", model="ct-resaunet", device="cpu",
                              python=sys.executable)
    assert command[:4] == [sys.executable, "-m", "CervixAutoSegLib", "segment"]
    assert command[command.index("--model") + 1] == "ct-resaunet" and "--progress-json" in command
    environment = child_environment({"PYTHONPATH": "/elsewhere"})
    assert environment["PYTHONPATH"].split(os.pathsep) == [str(package_parent()), "/elsewhere"]


def test_the_real_cli_failure_reaches_the_job_as_one_line(tmp_path):
    """A missing input: the real command exits non-zero with one line, no traceback."""
    job = BackgroundJob(segment_command(tmp_path / "missing.nrrd", tmp_path / "out", python=sys.executable),
                        cwd=tmp_path)
    job.start()
    assert job.wait(WAIT_LIMIT_SECONDS) is JobState.FAILED
    assert "does not exist" in job.error_message
    assert not any("Traceback" in line for line in job.stderr_lines)
    assert not (tmp_path / "out").exists()
