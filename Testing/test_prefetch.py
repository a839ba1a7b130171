"""The command line's head start: the input read by a forked child while the parent imports torch.

The forking runs in fresh interpreters (as a command does): this test process has torch imported
and pytest's threads, so :func:`prefetch.can_fork` rightly says no here.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import synthetic_ct

from CervixAutoSegLib import prefetch
from CervixAutoSegLib.dicom_writer import write_dicom_series
from CervixAutoSegLib.image_io import load_image
from CervixAutoSegLib.pipeline import segment


@pytest.fixture(scope="module")
def feet_first_series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("series") / "ct"
    write_dicom_series(synthetic_ct("FFS"), folder, modality="CT", patient_position="FFS", shuffle_seed=3)
    return folder


def run_fresh(code: str) -> dict:
    """``code`` in a fresh interpreter (torch not imported, one thread); its last stdout line as JSON."""
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                               check=False, env={**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"})
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_forked_reader_gives_exactly_what_reading_here_gives(feet_first_series, models_root):
    result = run_fresh(f"""
        import json, numpy as np
        from CervixAutoSegLib import prefetch
        from CervixAutoSegLib.pipeline import _load
        args = ({str(feet_first_series)!r}, None, "auto", {str(models_root)!r}, False)
        assert prefetch.can_fork()
        pending = prefetch.start(_load, *args)
        (forked, path, card, warnings), here = pending.result(), _load(*args)
        print(json.dumps({{
            "array": bool(np.array_equal(forked.array, here[0].array)) and forked.array.dtype == here[0].array.dtype,
            "writeable": bool(forked.array.flags.writeable),
            "geometry": bool(forked.same_grid(here[0], tolerance=0.0)),
            "meta": repr(sorted(forked.meta.items())) == repr(sorted(here[0].meta.items())),
            "rest": [path == here[1], card.id == here[2].id, warnings == here[3]],
            "seconds": pending.seconds, "modality": forked.modality}}))
    """)
    assert result["array"] and result["writeable"] and result["geometry"] and result["meta"]
    assert result["rest"] == [True, True, True] and result["modality"] == "CT" and result["seconds"] > 0


def test_the_readers_error_is_raised_here_as_the_same_one_line(tmp_path, models_root):
    (tmp_path / "notes.txt").write_text("not an image")
    result = run_fresh(f"""
        import json
        from CervixAutoSegLib import prefetch
        from CervixAutoSegLib.errors import InputError
        from CervixAutoSegLib.pipeline import _load
        args = ({str(tmp_path)!r}, None, "auto", {str(models_root)!r}, False)
        messages = []
        for attempt in (lambda: prefetch.start(_load, *args).result(), lambda: _load(*args)):
            try:
                attempt()
            except InputError as error:
                messages.append(str(error))
        print(json.dumps(messages))
    """)
    assert len(result) == 2 and result[0] == result[1] and str(tmp_path) in result[0]


def test_a_reader_that_dies_is_replaced_by_reading_here():
    result = run_fresh("""
        import json, os, signal
        from CervixAutoSegLib import prefetch
        parent = os.getpid()
        def read():
            if os.getpid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)  # the child dies without a word
            return "read here"
        pending = prefetch.start(read)
        print(json.dumps([pending.result(), pending.seconds]))
    """)
    assert result == ["read here", None]


def test_a_shared_file_this_process_cannot_map_is_replaced_by_reading_here():
    """The child placed its (large) answer in the shared file; mapping it fails here (no address
    space, say): the answer is read in this process instead, not lost."""
    result = run_fresh("""
        import json, os, mmap
        import numpy as np
        from CervixAutoSegLib import prefetch
        parent = os.getpid()
        def read():
            return ("child" if os.getpid() != parent else "here", np.arange(1000, dtype=np.int16))
        pending = prefetch.start(read)
        def no_mapping(*args, **kwargs):
            raise OSError("cannot allocate memory")
        prefetch.mmap.mmap = no_mapping  # only here: the child forked with the real one
        who, array = pending.result()
        print(json.dumps([who, int(array.sum()), pending.seconds]))
    """)
    assert result == ["here", 499500, None]


def test_shared_imports_are_made_once_before_the_fork():
    """Modules both processes need are imported here before forking: the child finds them loaded
    without importing them; without a fork (torch imported) nothing is imported."""
    result = run_fresh("""
        import json, os, sys
        from CervixAutoSegLib import prefetch
        def read():
            return [os.getpid(), "colorsys" in sys.modules, "wave" in sys.modules]
        pending = prefetch.start(read, shared_imports=("colorsys",))
        pid, child_has_colorsys, child_has_wave = pending.result()
        print(json.dumps([pid != os.getpid(), child_has_colorsys, child_has_wave, "colorsys" in sys.modules]))
    """)
    assert result == [True, True, False, True]
    assert prefetch.start(print, shared_imports=("this_module_does_not_exist",)) is None  # torch is imported here


def test_a_kept_child_runs_later_jobs_with_what_it_kept():
    """The child keeps part of its result and runs jobs on it: the job's arrays travel exactly
    (a second job's do not disturb the first's), the answer and the job's own exception come back
    here, a job not done yet times out like a future, and close() ends the child.  The child keeps
    freed memory for its jobs (a retained heap, where glibc has one); this process does not."""
    result = run_fresh("""
        import json, os, time
        from concurrent.futures import TimeoutError as Pending
        import numpy as np
        from CervixAutoSegLib import heap, prefetch
        parent = os.getpid()
        held = []
        def read():
            return {"image": np.arange(12, dtype=np.int16).reshape(3, 4), "network_input": np.ones(10**6)}
        def job(image, labels, seconds=0.0):
            time.sleep(seconds)
            if labels is None:
                raise ValueError("no labels")
            held.append(labels)  # the first job's arrays stay mapped in the child
            return [os.getpid() != parent, int(image.sum()), int(labels.sum(dtype=np.int64)),
                    [int(h.sum(dtype=np.int64)) for h in held], heap._in_force == (heap._libc() is not None)]
        pending = prefetch.start(read, keep=lambda value: value["image"])
        read_here = pending.result()
        first = np.full((40, 64, 64), 3, np.uint8)
        answers = [pending.submit(job, first).result(timeout=30)]
        slow = pending.submit(job, np.full((40, 64, 64), 1, np.uint8), 0.5)
        try:
            slow.result(timeout=0.01)
            answers.append("no timeout")
        except Pending:
            answers.append(slow.result())
        try:
            pending.submit(job, None).result()
        except ValueError as error:
            answers.append(str(error))
        pid = pending.pid
        pending.close()
        try:
            os.kill(pid, 0)
            answers.append("child alive")
        except ProcessLookupError:
            answers.append("child gone")
        print(json.dumps([pending.serving, int(read_here["image"].sum()), answers, heap._in_force]))
    """)
    n = 40 * 64 * 64
    assert result == [False, 66, [[True, 66, 3 * n, [3 * n], True], [True, 66, n, [3 * n, n], True], "no labels",
                                  "child gone"], False]


def test_a_child_that_dies_during_a_job_is_reported_not_waited_for():
    result = run_fresh("""
        import json, os, signal
        from CervixAutoSegLib import prefetch
        def die(kept):
            os.kill(os.getpid(), signal.SIGKILL)
        pending = prefetch.start(lambda: "image", keep=lambda value: value)
        pending.result()
        try:
            pending.submit(die).result()
            outcome = "no error"
        except prefetch.ReaderLost as error:
            outcome = "lost"
        print(json.dumps([outcome, pending.serving]))
    """)
    assert result == ["lost", False]


def test_no_fork_with_torch_imported_or_another_thread_running():
    assert "torch" in sys.modules and not prefetch.can_fork() and prefetch.start(print) is None
    result = run_fresh("""
        import json, threading
        from CervixAutoSegLib import prefetch
        alone = prefetch.can_fork()
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)
        worker.start()
        with_thread = prefetch.can_fork()
        stop.set(); worker.join()
        import torch
        print(json.dumps([alone, with_thread, prefetch.can_fork()]))
    """)
    assert result == [True, False, False]
    assert threading.active_count() >= 1


def test_the_command_reads_ahead_and_contours_as_segment_does_here(tmp_path, feet_first_series, models_root):
    completed = subprocess.run(
        [sys.executable, "-m", "CervixAutoSegLib", "segment", str(feet_first_series), "--out", str(tmp_path / "cli"),
         "--models", str(models_root), "--device", "cpu"], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    timings = json.loads((tmp_path / "cli" / "report.json").read_text())["timings_s"]
    assert "load_wait" in timings and timings["load"] > 0  # the forked reader did the reading
    assert timings["preprocess"] > 0  # and the CT runner's preprocessing, handed over as prepared
    here = segment(feet_first_series, tmp_path / "here", models_root=models_root, device="cpu")
    assert "load_wait" not in here.report["timings_s"]
    np.testing.assert_array_equal(load_image(tmp_path / "cli" / "labels.nii.gz").array, here.labels.array)
    assert sorted(path.name for path in (tmp_path / "cli").iterdir()) == sorted(path.name for path in here.out_dir.iterdir())


SEGMENT_RECORDING_WRITERS = """
    import json, os, signal, sys
    from CervixAutoSegLib import pipeline
    from CervixAutoSegLib.errors import Cancelled
    series, out, models, pids, how = sys.argv[1:6]
    real_write = pipeline._write_label_files
    def recording(*args, **kwargs):
        with open(pids, "a") as file:
            file.write(f"{os.getpid()} ")
        return real_write(*args, **kwargs)
    pipeline._write_label_files = recording
    if how == "child dies":
        def die(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        die.__module__, die.__qualname__ = pipeline.__name__, "_write_label_files_in_reader"  # sent by name
        pipeline._write_label_files_in_reader = die
    if how == "child fails":
        from CervixAutoSegLib import segfile
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")
        segfile.write_segmentation_nrrd = full
    cancel = None
    if how == "cancel":
        from CervixAutoSegLib import qa
        real_assess, asked = qa.assess, []
        qa.assess = lambda *args, **kwargs: asked.append(1) or real_assess(*args, **kwargs)
        cancel = lambda: bool(asked)
    try:
        result = pipeline.segment(series, out, models_root=models, device="cpu", prefetch_input=True, cancel=cancel)
        outcome = sorted(result.files)
    except Cancelled:
        outcome = "cancelled"
    except OSError as error:
        outcome = f"OSError: {error.strerror}"
    try:
        children = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        children = "none"
    print(json.dumps([os.getpid(), outcome, children]))
"""


def _segment_fresh(tmp_path, series, models_root, how):
    """``segment(..., prefetch_input=True)`` in a fresh interpreter: (its pid, its files or
    "cancelled", child processes left, pids that wrote label files)."""
    pids = tmp_path / f"writers-{how.replace(' ', '-')}.txt"
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SEGMENT_RECORDING_WRITERS), str(series), str(tmp_path / how),
         str(models_root), str(pids), how], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    pid, outcome, children = json.loads(completed.stdout.strip().splitlines()[-1])
    writers = [int(line) for line in pids.read_text().split()] if pids.exists() else []
    return pid, outcome, children, writers


def _label_files_equal(got: Path, want: Path) -> None:
    import nrrd
    import pydicom

    np.testing.assert_array_equal(load_image(got / "labels.nii.gz").array, load_image(want / "labels.nii.gz").array)
    assert (got / "labels.json").read_text() == (want / "labels.json").read_text()
    (got_seg, got_header), (want_seg, want_header) = (nrrd.read(str(f / "segmentation.seg.nrrd")) for f in (got, want))
    np.testing.assert_array_equal(got_seg, want_seg)
    assert got_header.keys() == want_header.keys()
    for got_rt, want_rt in [(pydicom.dcmread(got / "rtstruct.dcm"), pydicom.dcmread(want / "rtstruct.dcm"))]:
        assert [r.ROIName for r in got_rt.StructureSetROISequence] == [r.ROIName for r in want_rt.StructureSetROISequence]
        assert ([[c.ContourData for c in r.get("ContourSequence", [])] for r in got_rt.ROIContourSequence]
                == [[c.ContourData for c in r.get("ContourSequence", [])] for r in want_rt.ROIContourSequence])
        assert got_rt.PatientID == want_rt.PatientID and got_rt.StudyInstanceUID == want_rt.StudyInstanceUID


@pytest.mark.parametrize("how", ["child writes", "child dies"])
def test_the_reader_child_writes_the_label_files_or_this_process_when_it_died(tmp_path, feet_first_series,
                                                                               models_root, how):
    """The child that read the image writes the label files (another process) and they are those
    written here; a child killed during that job is replaced by writing in the parent.  Either
    way no child process is left."""
    pid, files, children, writers = _segment_fresh(tmp_path, feet_first_series, models_root, how)
    assert files == ["labels", "labels_json", "preview", "report", "rtstruct", "segmentation"]
    assert children == "none"
    assert writers == ([pid] if how == "child dies" else writers) and len(writers) == 1
    assert (writers[0] != pid) == (how == "child writes")
    here = segment(feet_first_series, tmp_path / "here", models_root=models_root, device="cpu")
    _label_files_equal(tmp_path / how, here.out_dir)


@pytest.mark.parametrize(("how", "raised"), [("cancel", "cancelled"),
                                             ("child fails", "OSError: No space left on device")])
def test_a_cancel_or_a_failure_while_the_reader_child_writes_publishes_nothing_and_ends_the_child(
        tmp_path, feet_first_series, models_root, how, raised):
    pid, outcome, children, writers = _segment_fresh(tmp_path, feet_first_series, models_root, how)
    assert outcome == raised and children == "none"
    assert all(writer != pid for writer in writers) and (writers or how == "cancel")  # only the child wrote
    assert not (tmp_path / how).exists() or not any((tmp_path / how).iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("writers")) in ([], [how])


def _round_trip(message, shared, send=prefetch._send):
    """``message`` sent through a pipe (a thread writes, as the child would) and received here."""
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (send(write_end, message, shared), os.close(write_end)))
    writer.start()
    try:
        return prefetch._receive(read_end, shared)
    finally:
        writer.join()
        os.close(read_end)


@pytest.mark.parametrize("how", ["shared file", "pipe", "shared file refused"])
def test_results_travel_exactly_and_writable_through_the_shared_file_or_the_pipe(how, monkeypatch):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3000, (7, 33, 21), dtype=np.int16)
    batch = rng.random((5, 1, 16, 16), dtype=np.float32)
    message = ("ok", ({"hu": hu, "batch": batch, "empty": np.zeros((0, 3), np.uint8), "name": "CT"},
                      np.asfortranarray(hu[:, :5, :3])), 0.25)
    shared = prefetch._shared_file() if how != "pipe" else None
    if how == "shared file refused":  # no memory for the file: the pipe carries the buffers
        monkeypatch.setattr(os, "pwrite", lambda *args: (_ for _ in ()).throw(OSError(errno.ENOSPC, "no space")))
    status, (arrays, fortran), seconds = _round_trip(message, shared)
    assert status == "ok" and seconds == 0.25 and arrays["name"] == "CT"
    for name, want in (("hu", hu), ("batch", batch), ("empty", message[1][0]["empty"])):
        got = arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.writeable
    assert np.array_equal(fortran, hu[:, :5, :3]) and fortran.flags.f_contiguous
    if shared is not None:
        size = os.fstat(shared.fd).st_size
        assert (size >= hu.nbytes + batch.nbytes) == (how == "shared file")
        before = os.pread(shared.fd, size, 0)
        arrays["hu"][:] = 0  # copy-on-write: the received arrays are this process's own
        assert os.pread(shared.fd, size, 0) == before
        shared.close()


def test_a_result_placed_in_a_shared_file_the_receiver_lacks_is_an_error_not_garbage():
    shared = prefetch._shared_file()
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (prefetch._send(write_end, np.ones(4), shared), os.close(write_end)))
    writer.start()
    with pytest.raises(OSError, match="shared file"):
        prefetch._receive(read_end, None)
    writer.join()
    os.close(read_end)
    shared.close()
