"""The ``cervixautoseg`` program ends without the interpreter's teardown, but never at the cost of
output: exit handlers, logging, the standard streams and other threads are all served first."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_exit_promptly_keeps_the_code_the_streams_the_exit_handlers_and_the_log(tmp_path):
    code = """
        import atexit, logging, logging.handlers, sys
        from pathlib import Path
        from CervixAutoSegLib.cli import exit_promptly
        folder = Path(sys.argv[1])
        atexit.register(lambda: (folder / "atexit.txt").write_text("ran"))
        # buffered until logging shuts down: only an exit that runs the exit handlers writes it
        handler = logging.handlers.MemoryHandler(100, target=logging.FileHandler(folder / "run.log"))
        logging.getLogger("t").addHandler(handler)
        logging.getLogger("t").warning("logged")
        sys.stdout.write("partial line without newline")  # still in the buffer
        sys.stderr.write("err")
        exit_promptly(3)
        print("never reached")
    """
    process = run_python(code, str(tmp_path))
    assert process.returncode == 3
    assert process.stdout == "partial line without newline" and process.stderr == "err"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "run.log").read_text() == "logged\n"


def test_exit_promptly_waits_for_a_thread_still_writing(tmp_path):
    code = """
        import sys, threading, time
        from pathlib import Path
        from CervixAutoSegLib.cli import exit_promptly
        def late_writer():
            time.sleep(0.5)
            Path(sys.argv[1], "late.txt").write_text("written")
        threading.Thread(target=late_writer).start()
        exit_promptly(0)
    """
    process = run_python(code, str(tmp_path))
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "late.txt").read_text() == "written"


def test_the_program_reports_a_bad_input_in_one_line_with_its_exit_code(tmp_path):
    missing = tmp_path / "no-such-series"
    process = subprocess.run([sys.executable, "-m", "CervixAutoSegLib", "series", str(missing)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert process.returncode == 2
    assert len(process.stderr.strip().splitlines()) == 1 and str(missing.name) in process.stderr
