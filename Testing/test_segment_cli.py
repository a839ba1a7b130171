"""``cervixautoseg segment``: outputs, progress protocol, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import synthetic_ct

from CervixAutoSegLib.cli import main
from CervixAutoSegLib.image_io import write_image
from CervixAutoSegLib.progress import parse_progress_line


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "ct.nii.gz"
    write_image(synthetic_ct("FFS"), path)
    return path


def assert_one_line_error(capsys, code: int, expected: str) -> None:
    captured = capsys.readouterr()
    assert code != 0
    error_lines = [line for line in captured.err.splitlines() if line.startswith("cervixautoseg segment: error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], captured.err
    assert "Traceback" not in captured.err


def test_progress_json_protocol_over_a_real_pipe(tmp_path, models_root, ct_file):
    completed = subprocess.run(
        [sys.executable, "-m", "CervixAutoSegLib", "segment", str(ct_file), "--out", str(tmp_path / "out"),
         "--models", str(models_root), "--device", "cpu", "--progress-json"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    events = [parse_progress_line(line) for line in lines]
    assert all(event is not None for event in events), "stdout must carry only progress events"
    assert next(json.loads(line).keys() for line in lines) == {"stage", "fraction", "message"}
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == 1.0
    assert events[-1].stage == "done" and "network" in {event.stage for event in events}
    assert (tmp_path / "out" / "labels.nii.gz").is_file() and (tmp_path / "out" / "report.json").is_file()


def test_default_run_draws_a_bar_on_stderr_and_summarises_on_stdout(tmp_path, models_root, ct_file, capsys):
    code = main(["segment", str(ct_file), "--out", str(tmp_path / "out"), "--models", str(models_root),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    assert "100.0% done" in captured.err and "[####" in captured.err
    assert "Bladder" in captured.out and "outputs in" in captured.out
    assert not any(parse_progress_line(line) for line in captured.out.splitlines())


def test_missing_input(tmp_path, models_root, capsys):
    code = main(["segment", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--models", str(models_root)])
    assert_one_line_error(capsys, code, "does not exist")
    assert not (tmp_path / "out").exists()


def test_not_an_image(tmp_path, models_root, capsys):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    code = main(["segment", str(bogus), "--out", str(tmp_path / "out"), "--models", str(models_root)])
    assert_one_line_error(capsys, code, "neither DICOM nor a known image format")


def test_mr_image_without_mr_model(tmp_path, models_root, capsys):
    mr = synthetic_ct("HFS")
    mr = mr.with_array(np.clip(mr.array + 1000, 0, None).astype(np.int16) + 100)
    path = tmp_path / "t2.nii.gz"
    write_image(mr, path)
    code = main(["segment", str(path), "--out", str(tmp_path / "out"), "--models", str(models_root)])
    assert_one_line_error(capsys, code, "no MR model is installed")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_requested_without_gpu(tmp_path, models_root, ct_file, capsys):
    code = main(["segment", str(ct_file), "--out", str(tmp_path / "out"), "--models", str(models_root),
                 "--device", "cuda"])
    assert_one_line_error(capsys, code, "no CUDA GPU")


def test_out_is_an_existing_file(tmp_path, models_root, ct_file, capsys):
    target = tmp_path / "out"
    target.write_text("precious")
    code = main(["segment", str(ct_file), "--out", str(target), "--models", str(models_root)])
    assert_one_line_error(capsys, code, "is not a folder")
    assert target.read_text() == "precious"


def test_no_model_installed(tmp_path, ct_file, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["segment", str(ct_file), "--out", str(tmp_path / "out"), "--models", str(tmp_path / "empty")])
    assert_one_line_error(capsys, code, "no CT model is installed")


def test_unknown_series_uid(tmp_path, models_root, capsys):
    from CervixAutoSegLib.dicom_writer import write_dicom_series

    write_dicom_series(synthetic_ct("HFS"), tmp_path / "dicom", modality="CT")
    code = main(["segment", str(tmp_path / "dicom"), "--out", str(tmp_path / "out"), "--models", str(models_root),
                 "--series", "1.2.3.4"])
    assert_one_line_error(capsys, code, "1.2.3.4")


def test_progress_protocol_lines_and_stage_fractions():
    import io

    from CervixAutoSegLib.progress import STAGE_WEIGHTS, JsonLinesReporter, ProgressEvent, StagedProgress

    stream = io.StringIO()
    tracker = StagedProgress(JsonLinesReporter(stream))
    tracker.start("load")
    tracker.start("network")
    tracker.update(0.5, "slices 5/10")
    tracker.finish()
    events = [parse_progress_line(line) for line in stream.getvalue().splitlines()]
    weights = STAGE_WEIGHTS
    halfway = weights["load"] + weights["preprocess"] + 0.5 * weights["network"]
    assert events[2] == ProgressEvent("network", pytest.approx(halfway), "slices 5/10")
    assert events[-1] == ProgressEvent("done", 1.0, "done")
    assert parse_progress_line("some stray text") is None
    assert parse_progress_line('{"stage": "load"}') is None


def test_sigterm_cancels_cleanly_and_leaves_no_staging_folder(tmp_path, models_root, ct_file):
    import signal

    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "CervixAutoSegLib", "segment", str(ct_file), "--out", str(out),
         "--models", str(models_root), "--device", "cpu", "--progress-json", "--batch-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in process.stdout:
            event = parse_progress_line(line)
            if event is not None and event.stage == "network":
                process.send_signal(signal.SIGTERM)
                break
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []
