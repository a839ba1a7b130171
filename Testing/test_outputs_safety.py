"""Issue 14, item 2 and the output-location parts of items 1 and 3: a run never loses a user's file.

Built from real files: a two-slice DICOM CT phantom contoured by the bundled CT model, a real
manual RTSTRUCT (``export-rtstruct``), real kills (SIGKILL of a ``segment`` subprocess at a fixed
point of its write stage), a real umask, and folders that really cannot be written.  The
``load_input`` / ``read_dicom_series`` / ``evaluate`` sentinels only prove that a refusal came
before the heavy work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import synthetic_ct

from CervixAutoSegLib.cli import main
from CervixAutoSegLib.outputs import (
    MANIFEST_FILE,
    STAGING_MARKER,
    STAGING_TAG,
    UNMARKED_GRACE_S,
    UNMARKED_TAG,
    OutputConflictError,
    OutputError,
    make_staging,
    remove_stale_staging,
)

OUTPUTS = ["labels.json", "labels.nii.gz", "preview.png", "report.json", "rtstruct.dcm", "segmentation.seg.nrrd"]
FAST = ["--device", "cpu", "--no-flip-tta", "--model", "ct"]
SHAPE = (2, 96, 128)


# ------------------------------------------------------------------ real inputs, made once
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A DICOM CT series, the same image as NIfTI, a manual RTSTRUCT on it and a label map."""
    from CervixAutoSegLib.dicom_writer import write_dicom_series
    from CervixAutoSegLib.image_io import load_image, write_image

    root = tmp_path_factory.mktemp("inputs")
    image = synthetic_ct("HFS", shape=SHAPE)
    write_dicom_series(image, root / "dicom", modality="CT")
    write_image(image, root / "ct.nii.gz")
    grid = load_image(root / "dicom")
    boxes = np.zeros(grid.shape, np.uint8)
    boxes[:, 20:40, 30:50] = 1
    write_image(grid.with_array(boxes), root / "manual" / "labels.nii.gz")
    assert main(["export-rtstruct", "--dicom", str(root / "dicom"), "--labels", str(root / "manual" / "labels.nii.gz"),
                 "--out", str(root / "manual" / "rtstruct.dcm"), "--model", "ct"]) == 0
    return {"dicom": root / "dicom", "nifti": root / "ct.nii.gz", "rtstruct": root / "manual" / "rtstruct.dcm",
            "labels": root / "manual" / "labels.nii.gz"}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, inputs) -> Path:
    """An output folder of one real ``segment`` run of the DICOM series (copied by the tests that need one)."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    assert main(["segment", str(inputs["dicom"]), "--out", str(out), *FAST]) == 0
    return out


def copy_of(earlier_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(earlier_run, out)
    return out


def users_folder(tmp_path: Path, inputs) -> Path:
    """A folder with the user's own rtstruct.dcm (a manual structure set), report.json, preview.png and notes."""
    import matplotlib.pyplot as plt

    out = tmp_path / "out"
    (out / "plans").mkdir(parents=True)
    shutil.copyfile(inputs["rtstruct"], out / "rtstruct.dcm")
    (out / "report.json").write_text(json.dumps({"physicist": "checked by hand"}))
    plt.imsave(out / "preview.png", np.eye(8))
    (out / "notes.txt").write_text("the physicist's own notes")
    (out / "plans" / "plan.txt").write_text("a plan")
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_manifest_matches(out: Path, names: list[str]) -> None:
    document = json.loads((out / MANIFEST_FILE).read_text())
    assert "pending" not in document
    assert document["files"] == {name: sha256(out / name) for name in names}


def assert_one_line(capsys, command: str, code: int, expected_code: int, *needles: str) -> str:
    """Exactly one line on stderr, ``cervixautoseg COMMAND: error: ...`` holding every needle."""
    err = capsys.readouterr().err
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cervixautoseg {command}: error:"), err
    assert all(needle in lines[0] for needle in needles), err
    return lines[0]


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Any reading of an image (or evaluation) fails the test: refusals must come first."""
    def read(*args, **kwargs):
        raise AssertionError("the input was read before the output location was refused")

    monkeypatch.setattr("CervixAutoSegLib.pipeline.load_input", read)
    monkeypatch.setattr("CervixAutoSegLib.dicom_series.read_dicom_series", read)
    monkeypatch.setattr("CervixAutoSegLib.evaluation.evaluate", read)


# ------------------------------------------------------------------ the user's files and the manifest
def test_users_own_outputs_stop_the_run_before_any_work(tmp_path, inputs, capsys, no_heavy_work):
    out = users_folder(tmp_path, inputs)
    before = snapshot(out)
    code = main(["segment", str(inputs["dicom"]), "--out", str(out), *FAST])
    assert_one_line(capsys, "segment", code, OutputConflictError.exit_code,
                    "preview.png", "report.json", "rtstruct.dcm", "--overwrite")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_our_names_only(tmp_path, inputs):
    out = users_folder(tmp_path, inputs)
    before = snapshot(out)
    assert main(["segment", str(inputs["dicom"]), "--out", str(out), "--overwrite", *FAST]) == 0
    after = snapshot(out)
    for name in ("notes.txt", "plans/plan.txt"):
        assert after[name] == before[name]
    for name in ("rtstruct.dcm", "report.json", "preview.png"):
        assert after[name] != before[name]
    assert sorted(after) == sorted([*OUTPUTS, MANIFEST_FILE, "notes.txt", "plans/plan.txt"])
    assert_manifest_matches(out, OUTPUTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_rerun_replaces_and_removes_only_what_the_manifest_lists(tmp_path, inputs, earlier_run):
    out = copy_of(earlier_run, tmp_path)
    assert_manifest_matches(out, OUTPUTS)
    (out / "notes.txt").write_text("keep me")
    assert main(["segment", str(inputs["nifti"]), "--out", str(out), *FAST]) == 0  # NIfTI: no RTSTRUCT
    ours = [name for name in OUTPUTS if name != "rtstruct.dcm"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*ours, MANIFEST_FILE, "notes.txt"])
    assert (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / "report.json").read_text())["input"]["source"] != "dicom"
    assert_manifest_matches(out, ours)


@pytest.mark.parametrize("edit", ["report.json", "rtstruct.dcm", "manifest"])
def test_an_output_edited_since_counts_as_the_users(tmp_path, inputs, earlier_run, capsys, no_heavy_work, edit):
    """An edited report.json would be replaced, an edited rtstruct.dcm removed (NIfTI input):
    both are the user's now.  An unreadable manifest vouches for nothing."""
    out = copy_of(earlier_run, tmp_path)
    if edit == "manifest":
        (out / MANIFEST_FILE).write_text("{ not json")
    else:
        with open(out / edit, "ab") as stream:
            stream.write(b"\n" if edit == "report.json" else b"\0")
    before = snapshot(out)
    code = main(["segment", str(inputs["nifti"]), "--out", str(out), *FAST])
    needles = OUTPUTS if edit == "manifest" else [edit]
    line = assert_one_line(capsys, "segment", code, OutputConflictError.exit_code, *needles)
    if edit != "manifest":
        assert not any(name in line for name in OUTPUTS if name != edit)
    assert snapshot(out) == before


# ------------------------------------------------------------------ kills and staging folders
KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    mode, out = sys.argv[1], Path(sys.argv[2]).absolute()
    if mode == "write":  # SIGKILL in the write stage, right after the RTSTRUCT is staged
        import CervixAutoSegLib.rtstruct as rtstruct
        real_write = rtstruct.write_rtstruct
        def write_then_die(*args, **kwargs):
            real_write(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        rtstruct.write_rtstruct = write_then_die
    else:  # SIGKILL between the second and the third rename into the output folder
        renames, real_replace = [], os.replace
        def replace(source, target, *args, **kwargs):
            if Path(target).parent == out and not Path(target).name.startswith("."):
                if len(renames) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                renames.append(target)
            return real_replace(source, target, *args, **kwargs)
        os.replace = replace
    from CervixAutoSegLib.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def killed_segment(mode: str, dicom: Path, out: Path) -> None:
    """Run ``segment`` in a subprocess that SIGKILLs itself at the point ``mode`` names."""
    command = [sys.executable, "-c", KILLER, mode, str(out), "segment", str(dicom), "--out", str(out), *FAST]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == -9, process.stderr


def staging_folders(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if re.fullmatch(rf"\.out\.{STAGING_TAG}-\d+-\w+", p.name)]


def test_a_kill_in_the_write_stage_leaves_a_marked_staging_folder_the_next_run_removes(tmp_path, inputs,
                                                                                      earlier_run):
    out = copy_of(earlier_run, tmp_path)
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    killed_segment("write", inputs["dicom"], out)
    assert snapshot(out) == before
    [staging] = staging_folders(tmp_path)
    marker = json.loads((staging / STAGING_MARKER).read_text())
    assert marker["out_dir"] == "out" and str(marker["pid"]) in staging.name
    assert (staging / "rtstruct.dcm").is_file()  # patient data: why it must not stay
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", staging.name])

    assert main(["segment", str(inputs["dicom"]), "--out", str(out), *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, MANIFEST_FILE, "notes.txt"])
    assert_manifest_matches(out, OUTPUTS)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_kill_between_renames_then_a_rerun_leaves_one_complete_set(tmp_path, inputs, earlier_run):
    out = copy_of(earlier_run, tmp_path)
    (out / "notes.txt").write_text("keep me")
    old = snapshot(out)
    killed_segment("renames", inputs["dicom"], out)
    half = snapshot(out)
    changed = [name for name in OUTPUTS if half[name] != old[name]]
    assert len(changed) <= 2 and "pending" in json.loads(half[MANIFEST_FILE])  # really killed mid-publish

    assert main(["segment", str(inputs["dicom"]), "--out", str(out), *FAST]) == 0  # no --overwrite needed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, MANIFEST_FILE, "notes.txt"])
    assert_manifest_matches(out, OUTPUTS)
    assert (out / "notes.txt").read_text() == "keep me"


def test_stale_staging_is_recognised_by_name_and_marker_and_a_live_run_is_left_alone(tmp_path):
    out = tmp_path / "out"
    code = ("import os, sys; from pathlib import Path; from CervixAutoSegLib.outputs import make_staging; "
            "[make_staging(Path(p)) for p in sys.argv[1:]]; os._exit(0)")  # dies without cleaning up, like a kill
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "other")], check=True, timeout=60)
    [dead] = staging_folders(tmp_path)
    dead_pid = json.loads((dead / STAGING_MARKER).read_text())["pid"]
    live = make_staging(out)  # this process: still running
    unmarked = tmp_path / f".out.{STAGING_TAG}-{dead_pid}-nomarker"  # the pattern alone proves nothing
    unmarked.mkdir()
    (unmarked / "data.bin").write_bytes(b"someone else's")
    elsewhere = tmp_path / f".out.{STAGING_TAG}-{dead_pid}-elsewhere"  # another host's: its pids are not ours
    shutil.copytree(dead, elsewhere)
    marker = json.loads((elsewhere / STAGING_MARKER).read_text())
    (elsewhere / STAGING_MARKER).write_text(json.dumps({**marker, "host": marker["host"] + "-elsewhere"}))
    others = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".other."))

    assert remove_stale_staging(out) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unmarked.name, elsewhere.name, *others])
    assert len(others) == 1  # the other output folder's staging is for its own next run to judge


def test_a_kill_while_the_staging_folder_is_created_leaves_an_unmarked_folder_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    staging = make_staging(out)
    assert not list(tmp_path.glob(f".out.{UNMARKED_TAG}-*"))  # marked, then renamed: never unmarked for long
    assert json.loads((staging / STAGING_MARKER).read_text())["out_dir"] == "out"
    old = tmp_path / f".out.{UNMARKED_TAG}-999999-abc123"  # what a kill before the marker leaves
    fresh = tmp_path / f".out.{UNMARKED_TAG}-{os.getpid()}-def456"  # a run creating its folder right now
    for folder in (old, fresh):
        folder.mkdir()
    os.utime(old, (time.time() - 2 * UNMARKED_GRACE_S,) * 2)
    assert remove_stale_staging(out) == [old]
    assert fresh.is_dir() and staging.is_dir()


def test_a_file_write_killed_midway_leaves_a_temporary_the_next_write_of_that_file_removes(tmp_path):
    from CervixAutoSegLib.atomic import TEMPORARY_TAG, _host_tag, write_text_atomic

    target = tmp_path / "rtstruct.dcm"
    code = ("import os, sys; from CervixAutoSegLib.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as temporary:\n"
            "    temporary.write_bytes(b'half an RTSTRUCT'); os._exit(0)")  # dies inside the write, like a kill
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, timeout=60)
    [left] = tmp_path.glob(f".rtstruct.dcm.{TEMPORARY_TAG}-*")
    assert left.read_bytes() == b"half an RTSTRUCT" and not target.exists()
    live = tmp_path / f".rtstruct.dcm.{TEMPORARY_TAG}-{_host_tag()}-{os.getpid()}-live.dcm"  # a running writer
    live.write_bytes(b"being written")
    elsewhere = tmp_path / f".rtstruct.dcm.{TEMPORARY_TAG}-zzzzzz-1-x.dcm"  # another host's (not a hex tag)
    elsewhere.write_bytes(b"another host")

    write_text_atomic(target, "complete")
    assert target.read_text() == "complete" and not left.exists()
    assert live.exists() and elsewhere.exists()


# ------------------------------------------------------------------ modes follow the umask
@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def test_outputs_follow_the_umask(tmp_path, inputs):
    from CervixAutoSegLib.atomic import write_text_atomic
    from CervixAutoSegLib.pipeline import segment

    with umask(0o027):
        segment(inputs["dicom"], tmp_path / "site" / "out", device="cpu", options={"flip_tta": False})
    out = tmp_path / "site" / "out"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {
        name: "0o640" for name in [*OUTPUTS, MANIFEST_FILE]}
    assert oct(out.stat().st_mode & 0o777) == oct((tmp_path / "site").stat().st_mode & 0o777) == "0o750"
    with umask(0o002):
        write_text_atomic(tmp_path / "shared.txt", "x")
    assert oct((tmp_path / "shared.txt").stat().st_mode & 0o777) == "0o664"


# ------------------------------------------------------------------ output locations: one line, before the work
@contextlib.contextmanager
def unwritable(folder: Path):
    """``folder`` made really unwritable: mode 0555, or as root (whom modes do not stop) immutable."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True,
                                                   check=False).returncode == 0:
        undo = ["chattr", "-i", str(folder)]
    else:  # pragma: no cover - root on a file system without the immutable flag
        pytest.skip("running as root and this file system has no immutable flag: no folder can be unwritable")
    try:
        yield folder
    finally:
        subprocess.run(undo, check=True)


def test_segment_out_below_a_regular_file(tmp_path, inputs, capsys, no_heavy_work):
    (tmp_path / "notes.txt").write_text("a file")
    code = main(["segment", str(inputs["dicom"]), "--out", str(tmp_path / "notes.txt" / "out"), *FAST])
    assert_one_line(capsys, "segment", code, OutputError.exit_code, "notes.txt is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "a file"


@pytest.mark.parametrize("where", ["in", "below"])
def test_segment_out_that_cannot_be_written(tmp_path, inputs, capsys, no_heavy_work, where):
    """``in``: an existing output folder that cannot be written; ``below``: its parent cannot be."""
    with unwritable(tmp_path / "locked") as locked:
        out = locked if where == "in" else locked / "out"
        code = main(["segment", str(inputs["dicom"]), "--out", str(out), *FAST])
        assert_one_line(capsys, "segment", code, OutputError.exit_code, f"cannot write in {locked}")
        assert list(locked.iterdir()) == []


def test_export_rtstruct_out_an_existing_folder(tmp_path, inputs, capsys, no_heavy_work):
    (tmp_path / "structures").mkdir()
    code = main(["export-rtstruct", "--dicom", str(inputs["dicom"]), "--labels", str(inputs["labels"]),
                 "--out", str(tmp_path / "structures")])
    assert_one_line(capsys, "export-rtstruct", code, OutputError.exit_code, "is a folder", "rtstruct.dcm")
    assert list((tmp_path / "structures").iterdir()) == []


def test_export_rtstruct_out_below_a_regular_file(tmp_path, inputs, capsys, no_heavy_work):
    (tmp_path / "notes.txt").write_text("a file")
    code = main(["export-rtstruct", "--dicom", str(inputs["dicom"]), "--labels", str(inputs["labels"]),
                 "--out", str(tmp_path / "notes.txt" / "rtstruct.dcm")])
    assert_one_line(capsys, "export-rtstruct", code, OutputError.exit_code, "notes.txt is a file, not a folder")


@pytest.mark.parametrize("out", ["metrics", "notes.txt/metrics"])
def test_evaluate_out_an_existing_file_or_below_one(tmp_path, inputs, capsys, no_heavy_work, out):
    (tmp_path / "metrics").write_text("a file")
    (tmp_path / "notes.txt").write_text("a file")
    code = main(["evaluate", "--truth", str(inputs["labels"]), "--pred", str(inputs["labels"]),
                 "--out", str(tmp_path / out)])
    expected = "exists and is not a folder" if out == "metrics" else "notes.txt is a file, not a folder"
    assert_one_line(capsys, "evaluate", code, OutputError.exit_code, expected)
    assert (tmp_path / "metrics").read_text() == "a file"
