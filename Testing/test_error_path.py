"""Issue 14 item 3: one error path for every command.

Errors the package reports on purpose, operating-system errors the user can fix (a real
file-size limit, a really immutable folder) and internal errors (a bug, stood in for by a
function that raises) all end in one line on stderr with a distinct exit code; a bug's full
traceback goes to a log file outside the output folder.  Grid mismatches are one line
summarising both grids.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import make_volume, write

from CervixAutoSegLib import cli, errors, outputs
from CervixAutoSegLib.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    FileSystemError,
    GridMismatchError,
    InputError,
    OutputConflictError,
    OutputError,
    fixable_os_error,
)
from CervixAutoSegLib.volume import Volume

REPOSITORY = Path(__file__).resolve().parents[1]
INTERNAL_LINE = re.compile(r"^cervixautoseg (\S+): internal error \((.+)\); full traceback in (.+)$")


@pytest.fixture(autouse=True)
def logs(tmp_path, monkeypatch) -> Path:
    """Internal-error logs of these tests go below tmp_path, through the default XDG location."""
    monkeypatch.delenv(cli.LOG_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "cervixautoseg" / "logs"


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def a_bug(monkeypatch, exception: BaseException) -> None:
    """The phantom generator raises ``exception``: a bug somewhere below a command."""
    def broken(*args, **kwargs):
        raise exception

    monkeypatch.setattr("CervixAutoSegLib.phantom.make_ct_phantom", broken)


# ------------------------------------------------------------------ internal errors
def test_an_internal_error_is_one_line_naming_a_log_with_the_full_traceback(tmp_path, monkeypatch, capsys,
                                                                             logs):
    a_bug(monkeypatch, ValueError("cannot reshape array of size 7\ninto shape (2, 3)"))
    out = tmp_path / "case"
    with umask(0o027):
        code = cli.main(["phantom", "--modality", "ct", "--out", str(out)])
    lines = stderr_lines(capsys)
    assert code == INTERNAL_ERROR_EXIT_CODE == 70
    assert len(lines) == 1, lines
    match = INTERNAL_LINE.match(lines[0])
    assert match, lines[0]
    assert match.group(1) == "phantom"
    assert match.group(2) == "ValueError: cannot reshape array of size 7 into shape (2, 3)"
    log = Path(match.group(3))
    assert log.parent == logs and log.name.startswith("cervixautoseg-phantom-") and log.suffix == ".log"
    text = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and "ValueError: cannot reshape" in text
    assert f"command line: cervixautoseg phantom --modality ct --out {out}" in text
    assert oct(log.stat().st_mode & 0o777) == "0o640"  # the user's umask, like any file the user makes
    assert not out.exists()  # nothing in (or as) the output folder


def test_memory_error_is_an_internal_error_saying_out_of_memory(monkeypatch, capsys):
    a_bug(monkeypatch, MemoryError())
    code = cli.main(["phantom", "--modality", "ct", "--out", "unused"])
    lines = stderr_lines(capsys)
    assert code == INTERNAL_ERROR_EXIT_CODE and len(lines) == 1
    assert INTERNAL_LINE.match(lines[0]).group(2) == "MemoryError: out of memory"


def test_an_unwrapped_os_error_the_user_cannot_fix_is_an_internal_error(monkeypatch, capsys):
    a_bug(monkeypatch, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    assert cli.main(["phantom", "--modality", "ct", "--out", "unused"]) == INTERNAL_ERROR_EXIT_CODE
    assert "ConnectionResetError: [Errno 104] Connection reset by peer" in stderr_lines(capsys)[0]


def test_verbose_also_prints_the_traceback(monkeypatch, capsys):
    a_bug(monkeypatch, KeyError("spacing"))
    code = cli.main(["-v", "phantom", "--modality", "ct", "--out", "unused"])
    lines = stderr_lines(capsys)
    assert code == INTERNAL_ERROR_EXIT_CODE
    assert lines[0] == "Traceback (most recent call last):" and "KeyError: 'spacing'" in lines
    assert INTERNAL_LINE.match(lines[-1]).group(2) == "KeyError: 'spacing'"


def test_without_a_usable_state_folder_the_log_goes_to_a_private_temp_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "file" / "state"))  # below a regular file
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    a_bug(monkeypatch, RuntimeError("boom"))
    assert cli.main(["phantom", "--modality", "ct", "--out", "unused"]) == INTERNAL_ERROR_EXIT_CODE
    log = Path(INTERNAL_LINE.match(stderr_lines(capsys)[0]).group(3))
    assert log.parent == tmp_path / "tmp" / f"cervixautoseg-logs-{os.getuid()}"
    assert oct(log.parent.stat().st_mode & 0o777) == "0o700"  # shared /tmp: a traceback names patients' files
    assert "RuntimeError: boom" in log.read_text()


def test_a_planted_temp_folder_of_another_kind_is_not_used(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "file" / "state"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tmp" / f"cervixautoseg-logs-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    a_bug(monkeypatch, RuntimeError("boom"))
    assert cli.main(["phantom", "--modality", "ct", "--out", "unused"]) == INTERNAL_ERROR_EXIT_CODE
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].endswith("internal error (RuntimeError: boom); the traceback could "
                                                 "not be saved anywhere; run again with -v to see it")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_old_logs_are_pruned(monkeypatch, capsys, logs):
    logs.mkdir(parents=True)
    for index in range(5):
        old = logs / f"cervixautoseg-segment-2020010{index}T000000Z-1.log"
        old.write_text("old")
        os.utime(old, (1_600_000_000 + index, 1_600_000_000 + index))
    (logs / "someone-elses.txt").write_text("kept")
    monkeypatch.setattr(cli, "KEPT_LOGS", 3)
    a_bug(monkeypatch, RuntimeError("boom"))
    assert cli.main(["phantom", "--modality", "ct", "--out", "unused"]) == INTERNAL_ERROR_EXIT_CODE
    newest = Path(INTERNAL_LINE.match(stderr_lines(capsys)[0]).group(3))
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        ["cervixautoseg-segment-20200103T000000Z-1.log", "cervixautoseg-segment-20200104T000000Z-1.log",
         newest.name, "someone-elses.txt"])


# ------------------------------------------------------------------ errors the user can fix
@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[str, Path]:
    """A small real DICOM CT series and a label map on exactly its grid."""
    from CervixAutoSegLib.image_io import load_image, write_image

    root = tmp_path_factory.mktemp("series")
    write(make_volume((5, 24, 24), spacing_xyz=(0.8, 0.8, 2.5)), root / "dicom")
    grid = load_image(root / "dicom")
    labels = np.zeros(grid.shape, np.uint8)
    labels[1:4, 6:18, 5:15] = 1
    write_image(grid.with_array(labels), root / "labels.nii.gz")
    return {"dicom": root / "dicom", "labels": root / "labels.nii.gz", "grid_of": root}


LIMITED_RUN = textwrap.dedent("""
    import resource, signal, sys
    # A real "file too large" from the kernel: the process may write at most LIMIT bytes per file.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from CervixAutoSegLib.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_a_file_size_limit_hit_while_writing_is_one_line_with_its_own_exit_code(tmp_path, series, logs):
    out = tmp_path / "rt" / "rtstruct.dcm"
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "XDG_STATE_HOME": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-c", LIMITED_RUN, "1024", "export-rtstruct", "--dicom", str(series["dicom"]),
         "--labels", str(series["labels"]), "--out", str(out), "--model", "ct"],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == FileSystemError.exit_code == 7, result.stderr
    hint = errors.FIXABLE_ERRNOS[errno.EFBIG]
    assert lines == [f"cervixautoseg export-rtstruct: error: File too large ({hint}) "
                     f"while writing to --out {out}"]
    assert not out.exists() and not logs.exists()  # a fixable error is not a bug: no log


@contextlib.contextmanager
def immutable(folder: Path):
    """``folder`` really unwritable: mode 0555, or, as root (whom modes do not stop), immutable."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True,
                                                   check=False).returncode == 0:
        undo = ["chattr", "-i", str(folder)]
    else:  # pragma: no cover - root on a file system without the immutable flag
        pytest.skip("root on a file system without the immutable flag: no folder can be unwritable")
    try:
        yield folder
    finally:
        subprocess.run(undo, check=True)


def test_a_permission_error_deep_in_a_command_names_the_file(tmp_path, monkeypatch, capsys, logs):
    """A real EACCES/EPERM from the OS, raised below a command and wrapped by a library, is one line."""
    def write_into(folder: Path):
        def make(*args, **kwargs):
            try:
                (folder / "scratch.bin").write_bytes(b"x")
            except OSError as error:
                raise RuntimeError("the library wrapped it") from error
        return make

    with immutable(tmp_path / "locked") as locked:
        monkeypatch.setattr("CervixAutoSegLib.phantom.make_ct_phantom", write_into(locked))
        code = cli.main(["phantom", "--modality", "ct", "--out", str(tmp_path / "case")])
    lines = stderr_lines(capsys)
    assert code == FileSystemError.exit_code and len(lines) == 1
    assert re.fullmatch(rf"cervixautoseg phantom: error: {re.escape(str(locked / 'scratch.bin'))}: "
                        r"(Permission denied|Operation not permitted) "
                        r"\(check the permissions or choose another location\)", lines[0]), lines[0]
    assert not logs.exists()


def test_fixable_os_errors_are_recognised_through_their_causes(tmp_path):
    with immutable(tmp_path / "locked") as locked:
        with pytest.raises(OSError) as raised:
            (locked / "new").mkdir()
    error = fixable_os_error(raised.value)
    assert isinstance(error, FileSystemError) and error.errno in (errno.EACCES, errno.EPERM)
    assert str(error).startswith(f"{locked / 'new'}: ")
    try:
        raise ValueError("no OS error in this chain")
    except ValueError as unrelated:
        assert fixable_os_error(unrelated) is None
    assert fixable_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "x")) is None
    full = fixable_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "--out results")
    assert str(full) == ("No space left on device (free some disk space and run again) "
                         "while writing to --out results")


# ------------------------------------------------------------------ exceptions and exit codes
def test_output_errors_live_in_errors_and_keep_their_exit_codes():
    assert outputs.OutputError is OutputError and outputs.OutputConflictError is OutputConflictError
    assert issubclass(OutputConflictError, OutputError) and issubclass(OutputError, InputError)
    assert (OutputError.exit_code, OutputConflictError.exit_code) == (5, 6)


def test_every_exit_code_is_distinct_and_in_the_table():
    classes = [errors.CervixAutoSegError, errors.InputError, errors.ModelError, errors.DependencyError,
               errors.OutputError, errors.OutputConflictError, errors.FileSystemError, errors.Cancelled]
    codes = [cls.exit_code for cls in classes] + [errors.INTERNAL_ERROR_EXIT_CODE]
    assert len(set(codes)) == len(codes)
    table = errors.__doc__.split("====  ====")[2]
    documented = {int(line.split()[0]) for line in table.splitlines() if line[:1].isdigit()}
    assert documented == {0, *codes}


# ------------------------------------------------------------------ grid mismatches: one line, both grids
def shifted(volume: Volume, mm: float) -> Volume:
    return Volume(volume.array, volume.spacing, volume.origin + np.array([0.0, mm, 0.0]), volume.direction)


def test_export_rtstruct_labels_on_another_grid_summarise_both_grids(tmp_path, series, capsys):
    from CervixAutoSegLib.image_io import load_image, write_image

    labels = load_image(series["labels"])
    write_image(shifted(labels, 7.25), tmp_path / "off.nii.gz")
    code = cli.main(["export-rtstruct", "--dicom", str(series["dicom"]), "--labels",
                     str(tmp_path / "off.nii.gz"), "--out", str(tmp_path / "rt.dcm"), "--model", "ct"])
    lines = stderr_lines(capsys)
    assert code == GridMismatchError.exit_code == InputError.exit_code and len(lines) == 1
    x, y, z = labels.origin
    assert lines[0].startswith(
        f"cervixautoseg export-rtstruct: error: --labels {tmp_path / 'off.nii.gz'} and the DICOM series are "
        "not on the same voxel grid, off by up to 7.25 mm (labels: 24x24x5 voxels of ")
    assert (f"origin ({x:g}, {y + 7.25:g}, {z:g}) mm; series: 24x24x5 voxels of 0.8x0.8x2.5 mm, "
            f"origin ({x:g}, {y:g}, {z:g}) mm); ") in lines[0]
    assert "Volume(" not in lines[0] and "np." not in lines[0]
    assert not (tmp_path / "rt.dcm").exists()


def test_evaluate_prediction_on_another_grid_summarises_both_grids(tmp_path, series, capsys):
    from CervixAutoSegLib.image_io import load_image, write_image

    labels = load_image(series["labels"])
    coarse = Volume(labels.array[:, ::2, ::2], labels.spacing * [2, 2, 1], labels.origin, labels.direction)
    write_image(coarse, tmp_path / "pred" / "case1.nii.gz")
    write_image(labels, tmp_path / "truth" / "case1.nii.gz")
    code = cli.main(["evaluate", "--truth", str(tmp_path / "truth" / "case1.nii.gz"),
                     "--pred", str(tmp_path / "pred" / "case1.nii.gz")])
    lines = stderr_lines(capsys)
    assert code == InputError.exit_code and len(lines) == 1
    pred, truth = tmp_path / "pred" / "case1.nii.gz", tmp_path / "truth" / "case1.nii.gz"
    assert lines[0].startswith(
        f"cervixautoseg evaluate: error: case case1: the prediction {pred} and the truth {truth} are not on "
        "the same voxel grid (prediction: 12x12x5 voxels of 1.6x1.6x2.5 mm")
    assert "; truth: 24x24x5 voxels of 0.8x0.8x2.5 mm, origin (" in lines[0]
    assert lines[0].endswith("); pass --resample-pred to resample the prediction onto the truth grid "
                             "(nearest neighbour)")
    assert "np.float64" not in lines[0]


def test_a_grid_summary_says_when_only_the_directions_differ():
    grid = make_volume((2, 3, 4), spacing_xyz=(1.0, 1.0, 2.0), origin=(0.0, -0.0004, 1e7))
    flipped = Volume(grid.array, grid.spacing, grid.origin, np.diag([-1.0, 1.0, 1.0]) @ grid.direction)
    message = str(GridMismatchError.between("a and b are not on the same voxel grid",
                                            {"a": flipped, "b": grid}, "do this"))
    grid_text = "4x3x2 voxels of 1x1x2 mm, origin (0, 0, 1e+07) mm"
    assert message == (f"a and b are not on the same voxel grid (a: {grid_text}; b: {grid_text}; "
                       "axis directions differ); do this")


# ------------------------------------------------------------------ library warnings
WARNING_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    import pydicom
    import CervixAutoSegLib.phantom as phantom
    from CervixAutoSegLib.cli import main
    from CervixAutoSegLib.errors import InputError

    def absurd_header(*args, **kwargs):
        np.array([1e308]) * 10  # numpy's real "overflow encountered in multiply" RuntimeWarning
        pydicom.valuerep.validate_value("UI", "(no UID)", pydicom.config.WARN)  # pydicom warns *and* logs
        raise InputError("the header is absurd")

    phantom.make_ct_phantom = absurd_header
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_do_not_break_the_one_line_unless_verbose(tmp_path, verbose):
    """A real process, so that Python prints warnings the way a user's terminal shows them."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    environment.pop("PYTHONWARNINGS", None)
    argv = [*(["-v"] if verbose else []), "phantom", "--modality", "ct", "--out", str(tmp_path / "case")]
    result = subprocess.run([sys.executable, "-c", WARNING_RUN, *argv], capture_output=True, text=True,
                            env=environment, cwd=tmp_path, timeout=300, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == InputError.exit_code
    assert lines[-1] == "cervixautoseg phantom: error: the header is absurd"
    if verbose:  # -v: the developer's detail, through logging
        assert any("RuntimeWarning: overflow encountered in multiply" in line for line in lines)
        assert any(line.startswith("WARNING: Invalid value for VR UI") for line in lines)  # pydicom's log
        assert any("UserWarning: Invalid value for VR UI" in line for line in lines)  # pydicom's warning
    else:
        assert lines == ["cervixautoseg phantom: error: the header is absurd"]


# ------------------------------------------------------------------ segment in-process
def test_segment_gives_the_callers_sigterm_handler_back(tmp_path, capsys):
    """In-process callers (tests, a host application) keep their own SIGTERM handler after a run."""
    import signal

    def own_handler(signum, frame):  # pragma: no cover - never called
        raise AssertionError("not expected")

    previous = signal.signal(signal.SIGTERM, own_handler)
    try:
        code = cli.main(["segment", str(tmp_path / "missing"), "--out", str(tmp_path / "out"),
                         "--progress-json"])
        assert signal.getsignal(signal.SIGTERM) is own_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == InputError.exit_code and "does not exist" in stderr_lines(capsys)[-1]


def test_segment_runs_outside_the_main_thread(tmp_path, capsys):
    """Python allows signal handlers only in the main thread: elsewhere segment runs without one
    instead of dying with 'signal only works in main thread'."""
    import threading

    codes = []
    worker = threading.Thread(target=lambda: codes.append(cli.main(
        ["segment", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--progress-json"])))
    worker.start()
    worker.join(timeout=120)
    lines = stderr_lines(capsys)
    assert codes == [InputError.exit_code], lines
    assert len(lines) == 1 and "does not exist" in lines[0]


# ------------------------------------------------------------------ export-rtstruct references only real UIDs
def test_export_rtstruct_refuses_a_series_without_series_uid(tmp_path, series, capsys):
    """Found by the fuzz test: the reader labelled such a series with a placeholder naming its folder,
    which the RTSTRUCT used to carry as the UID of the series it refers to.  The reader now refuses
    an image without Series Instance UID itself, naming the file."""
    import pydicom

    shutil.copytree(series["dicom"], tmp_path / "dicom")
    for path in sorted((tmp_path / "dicom").iterdir()):
        dataset = pydicom.dcmread(path)
        del dataset.SeriesInstanceUID
        dataset.save_as(path)
    out = tmp_path / "rtstruct.dcm"
    code = cli.main(["export-rtstruct", "--dicom", str(tmp_path / "dicom"), "--labels", str(series["labels"]),
                     "--out", str(out), "--model", "ct"])
    lines = stderr_lines(capsys)
    assert code == InputError.exit_code and len(lines) == 1
    first = sorted((tmp_path / "dicom").iterdir())[0]
    assert lines[0].startswith(f"cervixautoseg export-rtstruct: error: no DICOM image series found in "
                               f"{tmp_path / 'dicom'}: damaged DICOM file {first}: an image without Series "
                               "Instance UID (0020,000E)"), lines[0]
    assert not out.exists()
