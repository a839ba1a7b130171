"""The `evaluate` command end to end on label maps written to disk with SimpleITK."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

SimpleITK = pytest.importorskip("SimpleITK")

from CervixAutoSegLib.cli import main  # noqa: E402
from CervixAutoSegLib.evaluation import SUMMARY_FILES, case_id_for, pair_cases  # noqa: E402
from CervixAutoSegLib.metrics import compare_volumes  # noqa: E402
from CervixAutoSegLib.ct.family import CT_STRUCTURES  # noqa: E402
from CervixAutoSegLib.mr.family import MR_STRUCTURES  # noqa: E402
from CervixAutoSegLib.structures import write_labels_json  # noqa: E402
from CervixAutoSegLib.volume import Volume  # noqa: E402

SPACING_XYZ = (0.9, 0.9, 3.0)
FEET_FIRST = np.diag([1.0, 1.0, -1.0])
SHAPE_ZYX = (16, 48, 40)


def ct_labels(offset_zyx: tuple[int, int, int] = (0, 0, 0), missing: tuple[int, ...] = ()) -> np.ndarray:
    """Four boxes with the CT label values 1-4, optionally moved by whole voxels."""
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    boxes = {1: (slice(3, 9), slice(5, 20), slice(5, 18)), 2: (slice(4, 12), slice(28, 36), slice(16, 24)),
             3: (slice(2, 14), slice(5, 12), slice(26, 33)), 4: (slice(8, 13), slice(22, 27), slice(4, 12))}
    for value, box in boxes.items():
        if value not in missing:
            labels[box] = value
    return np.roll(labels, offset_zyx, axis=(0, 1, 2))


def write_volume(path: Path, array: np.ndarray, direction: np.ndarray = FEET_FIRST,
                 origin=(-20.0, 35.0, 80.0)) -> Volume:
    volume = Volume(array, SPACING_XYZ, origin, direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    SimpleITK.WriteImage(volume.to_sitk(), str(path))
    return volume


@pytest.fixture()
def cohort(tmp_path: Path) -> dict:
    """Phantom-style truth folders vs segment-style prediction folders (plus one flat file)."""
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    cases = {"perfect": ((0, 0, 0), ()), "shifted": ((1, 0, 2), ()), "missed_rectum": ((0, 1, 0), (2,))}
    volumes = {}
    for case_id, (offset, missing) in cases.items():
        truth = write_volume(truth_dir / case_id / "truth.nii.gz", ct_labels())
        pred = write_volume(pred_dir / case_id / "labels.nii.gz", ct_labels(offset, missing))
        write_labels_json(pred_dir / case_id / "labels.json", "ct", CT_STRUCTURES)
        volumes[case_id] = (truth, pred)
    # A flat prediction file pairs by stem; a truth-only case is reported as unmatched.
    (pred_dir / "perfect" / "segmentation.seg.nrrd").write_bytes(b"not a label map")
    write_volume(truth_dir / "orphan" / "truth.nii.gz", ct_labels())
    return {"truth": truth_dir, "pred": pred_dir, "volumes": volumes, "out": tmp_path / "report"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_cohort_report_contents(cohort, capsys, caplog):
    code = main(["evaluate", "--truth", str(cohort["truth"]), "--pred", str(cohort["pred"]),
                 "--out", str(cohort["out"])])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "orphan" in caplog.text  # unmatched case announced, not silently dropped
    out = cohort["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(SUMMARY_FILES)  # no temporary files left

    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 3 * len(CT_STRUCTURES)
    by_key = {(r["case_id"], r["structure"]): r for r in rows}
    for case_id, (truth, pred) in cohort["volumes"].items():
        for structure in CT_STRUCTURES:
            expected = compare_volumes(truth, pred, truth_values=structure.value)
            row = by_key[(case_id, structure.name)]
            assert row["status"] == expected.status
            assert float(row["dsc"]) == pytest.approx(expected.dsc, rel=1e-5)
            assert float(row["hd95_pooled_mm"]) == pytest.approx(expected.hd95_pooled_mm, rel=1e-5)
    assert float(by_key[("perfect", "Bladder")]["dsc"]) == 1.0
    assert float(by_key[("perfect", "Bladder")]["hd95_pooled_mm"]) == 0.0
    missed = by_key[("missed_rectum", "Rectum")]
    assert missed["status"] == "pred_empty" and float(missed["dsc"]) == 0.0
    assert math.isinf(float(missed["hd95_pooled_mm"]))
    assert float(missed["apl_mm"]) > 0

    summary = {r["structure"]: r for r in read_csv(out / "summary.csv")}
    rectum_dsc = [float(by_key[(c, "Rectum")]["dsc"]) for c in cohort["volumes"]]
    assert float(summary["Rectum"]["dsc_mean"]) == pytest.approx(np.mean(rectum_dsc), rel=1e-5)
    assert float(summary["Rectum"]["dsc_sd"]) == pytest.approx(np.std(rectum_dsc, ddof=1), rel=1e-4)
    rectum_hd = [float(by_key[(c, "Rectum")]["hd95_pooled_mm"]) for c in ("perfect", "shifted")]
    assert float(summary["Rectum"]["hd95_pooled_mm_mean"]) == pytest.approx(np.mean(rectum_hd), rel=1e-5)
    assert summary["Rectum"]["n_pred_empty"] == "1" and summary["Rectum"]["hd95_pooled_mm_n"] == "2"
    structure_means = [float(summary[s.name]["dsc_mean"]) for s in CT_STRUCTURES]
    assert float(summary["mDSC"]["dsc_mean"]) == pytest.approx(np.mean(structure_means), rel=1e-5)

    document = json.loads((out / "metrics.json").read_text(),
                          parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert set(document["definitions"]) >= {"dsc", "hd95_pooled_mm", "hd95_directed_max_mm", "msd_mm",
                                            "surface_dsc", "apl_mm"}
    assert "medpy" in document["definitions"]["hd95_pooled_mm"]
    assert document["unmatched"]["truth_only"] == ["orphan"]
    case = next(c for c in document["cases"] if c["case_id"] == "missed_rectum")
    rectum = next(s for s in case["structures"] if s["structure"] == "Rectum")
    assert rectum["hd95_pooled_mm"] is None and rectum["status"] == "pred_empty"
    assert len(rectum["apl_per_slice_mm"]) == SHAPE_ZYX[0]
    assert sum(rectum["apl_per_slice_mm"]) == pytest.approx(rectum["apl_mm"], abs=0.01)

    markdown = (out / "summary.md").read_text()
    assert "| Rectum | Rectum | 3 |" in markdown
    assert "**mDSC**" in markdown and "**mHD**" in markdown
    assert "eq. 7" in markdown and "surface-distance" in markdown  # both HD95 definitions footnoted

    from matplotlib import image

    picture = image.imread(out / "boxplots.png")
    assert picture.shape[0] > 300 and picture.shape[1] > 600
    bladder = np.asarray(CT_STRUCTURES[0].color) / 255.0
    # Boxes are drawn in the structure colour (alpha-blended on white).
    blended = 0.55 * bladder + 0.45
    assert np.any(np.all(np.abs(picture[..., :3] - blended) < 0.03, axis=-1))


def test_single_case_mr_labels_json_organ_includes_tumour(tmp_path, capsys):
    """MR label maps paint the tumour over the organ: the organ mask must be their union."""
    organ = np.zeros(SHAPE_ZYX, np.uint8)
    organ[4:12, 10:30, 10:30] = 1
    organ[6:10, 15:25, 15:25] = 2
    truth_path, pred_path = tmp_path / "t" / "case1.nrrd", tmp_path / "p" / "case1.nii.gz"
    write_volume(truth_path, organ)
    write_volume(pred_path, organ)
    write_labels_json(pred_path.parent / "labels.json", "mr", MR_STRUCTURES)
    out = tmp_path / "out"
    assert main(["evaluate", "--truth", str(truth_path), "--pred", str(pred_path), "--out", str(out)]) == 0
    rows = {r["structure"]: r for r in read_csv(out / "metrics.csv")}
    assert set(rows) == {"Uterus_Cx_Vagina", "GTVp"}
    assert rows["Uterus_Cx_Vagina"]["label_values"] == "1+2"
    voxel_ml = np.prod(SPACING_XYZ) / 1000
    assert float(rows["Uterus_Cx_Vagina"]["volume_truth_ml"]) == pytest.approx(8 * 20 * 20 * voxel_ml, rel=1e-5)
    assert float(rows["GTVp"]["dsc"]) == 1.0 and rows["GTVp"]["case_id"] == "case1"


def test_grid_mismatch_is_refused_or_resampled_on_request(tmp_path, capsys, caplog):
    truth_path, pred_path = tmp_path / "truth.nii.gz", tmp_path / "pred.nii.gz"
    write_volume(truth_path, ct_labels())
    write_volume(pred_path, ct_labels(), origin=(-20.0, 35.0, 83.0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("previous results\n")
    code = main(["evaluate", "--truth", str(truth_path), "--pred", str(pred_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "same voxel grid" in err and "origin" in err and "Traceback" not in err
    assert (out / "metrics.csv").read_text() == "previous results\n"  # untouched

    assert main(["evaluate", "--truth", str(truth_path), "--pred", str(pred_path), "--out", str(out),
                 "--resample-pred"]) == 0
    assert "resampling" in caplog.text
    rows = {r["structure"]: r for r in read_csv(out / "metrics.csv")}
    # The prediction sits 3 mm (one slice) away in z; nearest-neighbour resampling keeps that.
    assert float(rows["Bladder"]["hd_max_mm"]) == pytest.approx(3.0)


@pytest.mark.parametrize("problem", ["missing", "mixed", "float_labels", "no_common_case", "bad_tolerance"])
def test_bad_input_gives_one_line(tmp_path, capsys, problem):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    write_volume(truth_dir / "a.nii.gz", ct_labels())
    write_volume(pred_dir / "a.nii.gz", ct_labels())
    args = ["evaluate", "--truth", str(truth_dir), "--pred", str(pred_dir)]
    if problem == "missing":
        args[2] = str(tmp_path / "nowhere")
    elif problem == "mixed":
        args[4] = str(pred_dir / "a.nii.gz")
    elif problem == "float_labels":
        write_volume(pred_dir / "a.nii.gz", ct_labels().astype(np.float32) * 0.5)
    elif problem == "no_common_case":
        (pred_dir / "a.nii.gz").rename(pred_dir / "b.nii.gz")
    elif problem == "bad_tolerance":
        args += ["--tolerance", "-1"]
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("cervixautoseg evaluate: error:")


def test_rtstruct_truth_on_its_dicom_series(tmp_path, capsys):
    """Truth as RTSTRUCT (feet-first series, shuffled files) against the label map it was drawn from."""
    from CervixAutoSegLib.dicom_writer import write_dicom_series
    from CervixAutoSegLib.image_io import load_image
    from CervixAutoSegLib.rtstruct import write_rtstruct

    case = tmp_path / "truth" / "p7"
    image = Volume(np.full(SHAPE_ZYX, -1000, np.int16), SPACING_XYZ, (-20.0, 35.0, 80.0), FEET_FIRST)
    write_dicom_series(image, case / "dicom", modality="CT", patient_position="FFS", shuffle_seed=3)
    reference = load_image(case / "dicom")
    labels = reference.with_array(ct_labels())
    write_rtstruct(case / "rtstruct.dcm", labels, reference, CT_STRUCTURES, model_name="test", model_version="0")
    pred = tmp_path / "pred" / "p7" / "labels.nii.gz"
    write_volume(pred, labels.array, labels.direction, labels.origin)

    out = tmp_path / "out"
    assert main(["evaluate", "--truth", str(tmp_path / "truth"), "--pred", str(tmp_path / "pred"),
                 "--out", str(out)]) == 0, capsys.readouterr().err
    rows = {r["structure"]: r for r in read_csv(out / "metrics.csv")}
    assert set(rows) == {s.name for s in CT_STRUCTURES}
    for row in rows.values():
        assert row["case_id"] == "p7" and row["status"] == "both_present"
        assert float(row["dsc"]) > 0.99 and float(row["hd95_pooled_mm"]) <= 1.0

    # A single RTSTRUCT file with its series named explicitly.
    moved = case.parent / "elsewhere.dcm"
    (case / "rtstruct.dcm").rename(moved)
    assert main(["evaluate", "--truth", str(moved), "--pred", str(pred), "--dicom", str(case / "dicom")]) == 0


def test_case_ids_and_pairing(tmp_path):
    assert case_id_for(Path("/x/case07/truth.nii.gz")) == "case07"
    assert case_id_for(Path("/x/pred/case07.nii.gz")) == "case07"
    assert case_id_for(Path("/x/case07/labels.nrrd")) == "case07"
    assert case_id_for(Path("/x/case07/rtstruct.dcm")) == "case07"
    write_volume(tmp_path / "t" / "p1" / "truth.nii.gz", ct_labels())
    write_volume(tmp_path / "p" / "p1.nii.gz", ct_labels())
    pairs, unmatched = pair_cases(tmp_path / "t", tmp_path / "p")
    assert [(p.case_id, p.truth.name, p.pred.name) for p in pairs] == [("p1", "truth.nii.gz", "p1.nii.gz")]
    assert unmatched == {"truth_only": [], "pred_only": []}
