"""The command line's head start: the input read by a forked child while the parent imports torch.

The forking runs in fresh interpreters (as a command does): this test process has torch imported
and pytest's threads, so :func:`prefetch.can_fork` rightly says no here.
"""

from __future__ import annotations

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
        monkeypatch.setattr(os, "ftruncate", lambda *args: (_ for _ in ()).throw(OSError("no space")))
    status, (arrays, fortran), seconds = _round_trip(message, shared)
    assert status == "ok" and seconds == 0.25 and arrays["name"] == "CT"
    for name, want in (("hu", hu), ("batch", batch), ("empty", message[1][0]["empty"])):
        got = arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.writeable
    assert np.array_equal(fortran, hu[:, :5, :3]) and fortran.flags.f_contiguous
    if shared is not None:
        size = os.fstat(shared).st_size
        assert (size >= hu.nbytes + batch.nbytes) == (how == "shared file")
        before = os.pread(shared, size, 0)
        arrays["hu"][:] = 0  # copy-on-write: the received arrays are this process's own
        assert os.pread(shared, size, 0) == before
        os.close(shared)


def test_a_result_placed_in_a_shared_file_the_receiver_lacks_is_an_error_not_garbage():
    shared = prefetch._shared_file()
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (prefetch._send(write_end, np.ones(4), shared), os.close(write_end)))
    writer.start()
    with pytest.raises(OSError, match="shared file"):
        prefetch._receive(read_end, None)
    writer.join()
    os.close(read_end)
    os.close(shared)
