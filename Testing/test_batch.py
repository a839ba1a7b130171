"""``cervixautoseg batch``: a cohort on a real Dask LocalCluster with the bundled CT model.

Four small CT phantoms (128x128, 10 mm slices: a few seconds each) are segmented by two worker
processes; one worker is killed with SIGKILL while it writes a case, and the batch must still end
with all four results.  A rerun skips what is finished and redoes what is not; a broken case
fails alone, with its one-line reason, while the others are segmented and evaluated.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from CervixAutoSegLib.cli import main
from CervixAutoSegLib.cohort import CaseSettings, discover_cohort, incomplete_reason, run_batch
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.image_io import load_image, write_image
from CervixAutoSegLib.outputs import STAGING_MARKER, STAGING_TAG, read_manifest, write_manifest

CASES = ("case-1", "case-2", "case-3", "case-4")
FAST = ["--device", "cpu", "--no-flip-tta"]
STAGING = re.compile(rf"\.(?P<case>.+)\.{STAGING_TAG}-(?P<pid>\d+)-")


def small_phantom(seed: int):
    """A CT phantom small enough for a few seconds of segmentation on one thread."""
    from CervixAutoSegLib.phantom import make_ct_phantom

    return make_ct_phantom(seed, matrix=128, slice_thickness_mm=10.0)


@pytest.fixture(scope="module")
def case_folders(tmp_path_factory) -> Path:
    """INPUT/case-N/dicom/*.dcm + truth.nii.gz: the phantom layout, four cases."""
    from CervixAutoSegLib.phantom import write_phantom

    root = tmp_path_factory.mktemp("cohort")
    for number, case_id in enumerate(CASES):
        write_phantom(small_phantom(7100 + number), root / case_id)
    return root


class WorkerKiller(threading.Thread):
    """Kills (SIGKILL) the first worker process seen writing a case: the pid is in the name of the
    staging folder ``segment`` fills beside the case folder, so the worker surely holds that case.

    It waits for the folder's marker and a first output in it: a kill between ``mkdtemp`` and the
    marker leaves an unmarked empty folder that no later run removes (reported against
    ``outputs.make_staging``; not what this test is about)."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out, self.stop, self.killed = out, threading.Event(), None

    def run(self) -> None:
        while not self.stop.is_set():
            for name in _listing(self.out):
                match = STAGING.match(name)
                if not match or int(match["pid"]) == os.getpid():  # never this test process
                    continue
                if {STAGING_MARKER, "labels.nii.gz"} <= _listing(self.out / name):
                    os.kill(int(match["pid"]), signal.SIGKILL)
                    self.killed = (match["case"], int(match["pid"]))
                    return
            time.sleep(0.002)


def _listing(folder: Path) -> set[str]:
    """Names in ``folder``; empty when it does not exist (yet, or any more: staging folders come and go)."""
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


@pytest.fixture(scope="module")
def killed_run(case_folders, tmp_path_factory):
    """``run_batch`` on a local cluster of 2 workers x 1 thread, one worker killed mid-case."""
    out = tmp_path_factory.mktemp("batch") / "out"
    killer = WorkerKiller(out)
    environment = dict(os.environ)
    killer.start()
    try:
        run = run_batch(case_folders, out, CaseSettings(device="cpu", options=(("flip_tta", False),)),
                        workers=2, threads=1)
    finally:
        killer.stop.set()
        killer.join()
    # A nanny restarting the killed worker sets OMP_NUM_THREADS=1 etc. here again: batch must undo it.
    assert dict(os.environ) == environment
    return run, out, killer.killed


def test_a_killed_worker_does_not_lose_its_case(killed_run, case_folders):
    run, out, killed = killed_run
    assert killed is not None, "no worker was seen writing a case"
    case_id, pid = killed
    by_id = {result.case_id: result for result in run.results}
    assert list(by_id) == list(CASES) and run.exit_code == 0, [(r.case_id, r.status, r.reason) for r in run.results]
    for result in run.results:
        # A kill in the last instant (final manifest written, staging not yet removed) leaves a finished
        # folder, which the retried task rightly skips; every other case was segmented once.
        assert result.status == "ok" or (result.case_id == case_id and result.status == "skipped"), result
        assert incomplete_reason(out / result.case_id) is None
        labels, truth = load_image(out / result.case_id / "labels.nii.gz"), load_image(case_folders / result.case_id / "truth.nii.gz")
        assert labels.shape == truth.shape and labels.array.max() > 0
        assert set(result.volumes_ml) == {"Bladder", "Rectum", "CTVn", "CTVp"}
    assert by_id[case_id].worker.split(":")[1] != str(pid), "the killed worker cannot have delivered the result"
    assert [result.interrupted_attempts for result in run.results] == [int(c == case_id) for c in CASES]
    assert not [name for name in os.listdir(out) if STAGING_TAG in name], "the killed run's staging folder remains"
    document = json.loads((out / "batch.json").read_text())
    assert document["counts"]["failed"] == 0 and [case["case_id"] for case in document["cases"]] == list(CASES)
    assert document["cluster"].startswith("local cluster: 2 worker(s)")


def _damage(out: Path) -> None:
    """case-2 loses an output file; case-3 looks killed between its renames (pending manifest)."""
    (out / "case-2" / "preview.png").unlink()
    manifest = read_manifest(out / "case-3")
    staging = out / ".manifest-scratch"
    staging.mkdir()
    write_manifest(out / "case-3", staging, manifest.files, pending=dict(manifest.files))
    staging.rmdir()


def test_rerun_skips_finished_cases_and_redoes_unfinished_ones(killed_run, case_folders, capsys):
    _, out, _ = killed_run
    kept = {case: (out / case / "labels.nii.gz").stat().st_mtime_ns for case in ("case-1", "case-4")}
    _damage(out)
    assert incomplete_reason(out / "case-2") == "preview.png is missing"
    assert "interrupted" in incomplete_reason(out / "case-3")
    code = main(["batch", str(case_folders), "--out", str(out), "--workers", "2", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = _csv_rows(out / "batch.csv")
    assert {row["case_id"]: row["status"] for row in rows} == {"case-1": "skipped", "case-2": "ok", "case-3": "ok",
                                                              "case-4": "skipped"}
    assert all(incomplete_reason(out / case) is None for case in CASES)
    assert {case: (out / case / "labels.nii.gz").stat().st_mtime_ns for case in kept} == kept
    assert "4 case(s): 2 ok, 2 skipped, 0 failed" in captured.out
    assert len([line for line in captured.err.splitlines() if "/4  case-" in line]) == 4
    assert "Traceback" not in captured.err


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def dataset_with_a_broken_case(tmp_path_factory) -> Path:
    """A dataset (dataset.json) of two NIfTI phantom cases with labels and one whose image is not an image."""
    from CervixAutoSegLib.ct.family import CT_STRUCTURES
    from CervixAutoSegLib.dataset.manifest import Dataset, DatasetCase, write_dataset

    root = tmp_path_factory.mktemp("dataset")
    cases = []
    for number, case_id in enumerate(("pelvis-01", "pelvis-02")):
        phantom = small_phantom(7200 + number)
        write_image(phantom.image, root / case_id / "image.nii.gz")
        write_image(phantom.labels, root / case_id / "labels.nii.gz")
        # the second case's manual contours lack CTVn: the manifest says so, and it must not be scored
        status = {"Bladder": "matched", "Rectum": "matched", "CTVn": "missing" if number else "matched",
                  "CTVp": "matched"}
        cases.append(DatasetCase(case_id, root / case_id / "image.nii.gz", root / case_id / "labels.nii.gz",
                                 "test", "CT", {}, status))
    (root / "pelvis-03").mkdir()
    (root / "pelvis-03" / "image.dcm").write_text("exported notes, not a DICOM image\n")
    cases.append(DatasetCase("pelvis-03", root / "pelvis-03" / "image.dcm", None, "test", "CT", {}))
    write_dataset(Dataset(root, "ct", tuple(CT_STRUCTURES), tuple(cases)))
    return root


@pytest.fixture()
def scheduler_address():
    """A Dask cluster started outside ``batch`` (2 worker processes), for ``--scheduler``."""
    from distributed import LocalCluster

    from CervixAutoSegLib.cohort.cluster import environment_kept

    with environment_kept():  # Dask leaves its workers' OMP_NUM_THREADS=1 etc. in this process otherwise
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            yield cluster.scheduler_address


def test_broken_case_fails_alone_and_the_others_are_evaluated(dataset_with_a_broken_case, scheduler_address,
                                                             tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["batch", str(dataset_with_a_broken_case), "--out", str(out), "--scheduler", scheduler_address,
                 "--threads-per-worker", "1", "--evaluate", *FAST])
    captured = capsys.readouterr()
    assert code == 1
    document = json.loads((out / "batch.json").read_text())
    assert document["cluster"].startswith(f"{scheduler_address}: 2 worker(s)") and document["threads_per_case"] == 1
    assert document["input_kind"] == "dataset" and document["model"] == "ct"  # auto on a dataset: its family
    assert "Traceback" not in captured.err
    final = [line for line in captured.err.splitlines() if line.startswith("cervixautoseg batch:")]
    assert final == [f"cervixautoseg batch: 1 of 3 case(s) failed (reasons above and in {out / 'batch.csv'})"]
    rows = {row["case_id"]: row for row in _csv_rows(out / "batch.csv")}
    assert rows["pelvis-03"]["status"] == "failed" and "neither DICOM nor a known image format" in rows["pelvis-03"]["reason"]
    assert "\n" not in rows["pelvis-03"]["reason"] and not (out / "pelvis-03").exists()
    metrics = {(row["case_id"], row["structure"]): float(row["dsc"]) for row in _csv_rows(out / "evaluation" / "metrics.csv")}
    assert {case for case, _ in metrics} == {"pelvis-01", "pelvis-02"}
    assert ("pelvis-01", "CTVn") in metrics and ("pelvis-02", "CTVn") not in metrics
    assert rows["pelvis-02"]["CTVn_dsc"] == "" and float(rows["pelvis-02"]["CTVn_ml"]) > 0
    for case_id in ("pelvis-01", "pelvis-02"):
        assert rows[case_id]["status"] == "ok" and incomplete_reason(out / case_id) is None
        # the summary's DSC is the evaluation's, and the bundled model does find the bladder
        assert float(rows[case_id]["Bladder_dsc"]) == pytest.approx(metrics[(case_id, "Bladder")], abs=1e-4)
        assert metrics[(case_id, "Bladder")] > 0.8
    assert (out / "evaluation" / "summary.md").is_file() and (out / "evaluation" / "boxplots.png").is_file()
    assert "Bladder DSC" in captured.out and "pelvis-03: " in captured.out


def test_discovery_of_case_folders_and_image_files(tmp_path):
    root = tmp_path / "input"
    (root / "a" / "dicom").mkdir(parents=True)
    (root / "b").mkdir()
    write_image(small_volume(), root / "b" / "image.nrrd")
    write_image(small_volume(), root / "b" / "labels.nii.gz")
    write_image(small_volume(), root / "c.nii.gz")
    (root / "notes.txt").write_text("not a case")
    (root / ".hidden").mkdir()
    (root / "results").mkdir()  # the batch's own --out inside INPUT is not a case
    cohort = discover_cohort(root, root / "results")
    assert [(case.id, case.image.relative_to(root).as_posix(), case.labels and case.labels.name)
            for case in cohort.cases] == [("a", "a/dicom", None), ("b", "b/image.nrrd", "labels.nii.gz"),
                                          ("c", "c.nii.gz", None)]
    write_image(small_volume(), root / "b.nrrd")
    with pytest.raises(InputError, match="would both be case 'b'"):
        discover_cohort(root, root / "results")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cases in"):
        discover_cohort(tmp_path / "empty")


def small_volume():
    from CervixAutoSegLib.volume import Volume

    return Volume(np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 2.0), np.zeros(3), np.eye(3), modality="CT")


def test_without_dask_one_line_and_exit_code_4(case_folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    code = main(["batch", str(case_folders), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and "Dask distributed" in err[0] and "cervixautoseg[cohort]" in err[0]
    assert not (tmp_path / "out").exists()


def test_unreachable_scheduler_is_one_line_and_writes_nothing(case_folders, tmp_path, monkeypatch, capsys):
    from CervixAutoSegLib.cohort import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    code = main(["batch", str(case_folders), "--out", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("cervixautoseg batch: error: --scheduler tcp://127.0.0.1:1:")
    assert not (tmp_path / "out").exists()


def test_a_local_cluster_leaves_this_process_environment_as_it_was():
    from CervixAutoSegLib.cohort.cluster import open_client

    before = dict(os.environ)
    with open_client(workers=1, threads=1) as client:
        in_worker = client.submit(lambda: __import__("os").environ.get("OMP_NUM_THREADS"), pure=False)
        assert in_worker.result(timeout=60) == "1"  # the workers' share
    assert dict(os.environ) == before  # Dask's worker settings (OMP_NUM_THREADS=1, ...) not left here
