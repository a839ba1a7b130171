"""``evaluate`` against manual contours: RTSTRUCT truth (one file, a DICOM tree, an imported dataset)
versus real ``segment`` output folders gives exactly the numbers of the label maps the RTSTRUCTs
were drawn from.

Three small CT phantoms (head-first, feet-first, oblique) are written as DICOM, contoured by the
bundled CT model through ``segment``, and given RTSTRUCTs with clinic-style ROI names; the third
RTSTRUCT has no CTVn, which must be left out of the comparison rather than scored as a miss.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import small_ct_phantom, write_named_rtstruct, write_patient_series

from CervixAutoSegLib.cli import main
from CervixAutoSegLib.image_io import write_image

NUMBERS = ("dsc", "hd95_pooled_mm", "hd95_directed_max_mm", "hd_max_mm", "msd_mm", "surface_dsc", "apl_mm",
           "volume_truth_ml", "volume_pred_ml")
PATIENTS = {"A": (2000, "HFS", None), "B": (2001, "FFS", None), "C": (2002, "HFS", (10.0, 0.0, 0.0))}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # for this fixture's segment runs only: later tests get the process's threads back
    try:
        return _segmented_cohort(tmp_path_factory.mktemp("evaluate"))
    finally:
        torch.set_num_threads(threads)


def _segmented_cohort(root: Path) -> dict:
    tree, maps, pred = root / "tree", root / "truth_maps", root / "pred"
    for name, (seed, position, tilt) in PATIENTS.items():
        case = small_ct_phantom(seed, position=position, tilt_degrees=tilt)
        series = tree / f"patient_{name}" / "images"
        reference = write_patient_series(case, series, patient_id=f"ID-{name}", patient_name=f"Test^{name}",
                                         shuffle_seed=seed)
        labels = np.asarray(case.labels.array, dtype=np.uint8)
        rois = [("BLADDER_O", (1,)), ("Rectum", (2,)), ("CTVn_4500", (3,)), ("CTV-UV", (4,)), ("Rectum_PRV", (2,))]
        if name == "C":
            rois = [roi for roi in rois if roi[0] != "CTVn_4500"]
            labels = np.where(labels == 3, 0, labels).astype(np.uint8)  # the label map lacks it too
        write_named_rtstruct(tree / f"patient_{name}" / "RS1", case.labels.array, reference, rois)
        write_image(reference.with_array(labels, meta={}), maps / f"scan{name}" / "truth.nii.gz")
        assert main(["segment", str(series), "--out", str(pred / f"scan{name}"), "--device", "cpu",
                     "--no-flip-tta"]) == 0
    return {"root": root, "tree": tree, "maps": maps, "pred": pred}


def metrics(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(out / "metrics.csv", newline="", encoding="utf-8") as stream:
        return {(row["case_id"], row["structure"]): row for row in csv.DictReader(stream)}


def assert_same_numbers(rtstruct_rows: dict, map_rows: dict) -> None:
    for key, row in rtstruct_rows.items():
        for column in NUMBERS:
            assert row[column] == pytest.approx(map_rows[key][column]) if row[column] else not map_rows[key][column], \
                (key, column)


def test_dicom_tree_truth_pairs_by_series_and_gives_the_label_map_numbers(cohort, tmp_path, capsys):
    assert main(["evaluate", "--truth", str(cohort["maps"]), "--pred", str(cohort["pred"]),
                 "--out", str(tmp_path / "maps")]) == 0
    assert main(["evaluate", "--truth", str(cohort["tree"]), "--pred", str(cohort["pred"]),
                 "--out", str(tmp_path / "tree")]) == 0
    printed = capsys.readouterr().out
    from_maps, from_tree = metrics(tmp_path / "maps"), metrics(tmp_path / "tree")
    # Every structure of every case, except CTVn of C, which its RTSTRUCT does not have.
    assert set(from_tree) == set(from_maps) - {("scanC", "CTVn")}
    assert "scanC: CTVn not evaluated" in printed
    assert {row["status"] for row in from_tree.values()} == {"both_present"}
    assert all(float(from_tree[(case, "Bladder")]["dsc"]) > 0.5 for case in ("scanA", "scanB", "scanC"))
    assert_same_numbers(from_tree, from_maps)
    summary_tree = json.loads((tmp_path / "tree" / "metrics.json").read_text())["summary"]
    assert (tmp_path / "tree" / "boxplots.png").stat().st_size > 0 and len(summary_tree) == 4


def test_one_rtstruct_against_one_segment_folder(cohort, tmp_path):
    assert main(["evaluate", "--truth", str(cohort["maps"] / "scanB" / "truth.nii.gz"),
                 "--pred", str(cohort["pred"] / "scanB" / "labels.nii.gz"), "--out", str(tmp_path / "map")]) == 0
    # The image series is found through the prediction's report.json: nothing else names it.
    assert main(["evaluate", "--truth", str(cohort["tree"] / "patient_B" / "RS1"),
                 "--pred", str(cohort["pred"] / "scanB"), "--out", str(tmp_path / "rt")]) == 0
    rt, labelmap = metrics(tmp_path / "rt"), metrics(tmp_path / "map")
    assert len(rt) == 4
    assert_same_numbers({("x", s): row for (_, s), row in rt.items()},
                        {("x", s): row for (_, s), row in labelmap.items()})


def test_an_rtstruct_of_another_series_is_refused_in_one_line(cohort, capsys):
    code = main(["evaluate", "--truth", str(cohort["tree"] / "patient_A" / "RS1"), "--pred", str(cohort["pred"] / "scanB")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "the prediction was made on series" in err


def test_imported_dataset_truth_pairs_by_case_id(cohort, tmp_path):
    dataset = tmp_path / "dataset"
    assert main(["dataset", "import", str(cohort["tree"]), "--out", str(dataset)]) == 0
    key = json.loads((tmp_path / "dataset.key.json").read_text())
    by_case = tmp_path / "pred_by_case"
    for case_id, entry in key["cases"].items():
        shutil.copytree(cohort["pred"] / f"scan{entry['patient_id'][-1]}", by_case / case_id)
    assert main(["evaluate", "--truth", str(dataset), "--pred", str(by_case), "--out", str(tmp_path / "ds")]) == 0
    assert main(["evaluate", "--truth", str(cohort["maps"]), "--pred", str(cohort["pred"]),
                 "--out", str(tmp_path / "maps")]) == 0
    scan_of = {case_id: f"scan{entry['patient_id'][-1]}" for case_id, entry in key["cases"].items()}
    from_dataset = {(scan_of[case], s): row for (case, s), row in metrics(tmp_path / "ds").items()}
    assert set(from_dataset) == set(metrics(tmp_path / "maps")) - {("scanC", "CTVn")}
    assert_same_numbers(from_dataset, metrics(tmp_path / "maps"))
