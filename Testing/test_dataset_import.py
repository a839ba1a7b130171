"""``cervixautoseg dataset import``: a DICOM-RT tree of several patients → a dataset folder.

The tree is what a planning system's export looks like: CT series (head-first, feet-first and
oblique) written with pydicom under shuffled file names, RTSTRUCTs written by the product's
writer from known label maps and renamed the way physicians name ROIs, one patient's files
spread over two folders and two patients in one folder, plus a text file.  The import must pair
by UIDs (not folders), map the names, report what is ambiguous / missing / skipped, and
rasterise the ROIs back to the label maps they were drawn from.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import dice, small_ct_phantom, write_named_rtstruct, write_patient_series

from CervixAutoSegLib.cli import main
from CervixAutoSegLib.dataset import is_dataset, load_dataset
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.image_io import load_image

BLADDER, RECTUM, CTVN, CTVP = 1, 2, 3, 4
ALL = (1, 2, 3, 4)
PATIENTS = {"P1": ("PAT-ONE-001", "Alpha^Anna"), "P2": ("PAT-TWO-002", "Beta^Berta"),
            "P3": ("PAT-THREE-003", "Gamma^Greta"), "P4": ("PAT-FOUR-004", "Delta^Dora"),
            "P5": ("PAT-FIVE-005", "Eps^Erna")}


def build_tree(root: Path) -> dict:
    """Five patients; returns what each RTSTRUCT was drawn from, for the checks."""
    truth: dict[str, dict] = {}

    # P1, head first: TG-263-ish variants, helper structures that must be excluded, a body outline.
    p1 = small_ct_phantom(1000)
    ref = write_patient_series(p1, root / "export_a" / "CT_1", patient_id=PATIENTS["P1"][0],
                               patient_name=PATIENTS["P1"][1], shuffle_seed=1)
    # Its RTSTRUCT lies in P2's image folder: folders mean nothing.
    write_named_rtstruct(root / "export_b" / "mixed" / "RS.a91f.dcm", p1.labels.array, ref,
                         [("BLADDER_O", (BLADDER,)), ("rectum", (RECTUM,)), ("CTVn_4500", (CTVN,)),
                          ("CTV-UV", (CTVP,)), ("Rectum_PRV05", (RECTUM, CTVP)), ("z_opt_bladder", (BLADDER,)),
                          ("BODY", (0, 1, 2, 3, 4))])
    truth["P1"] = {"labels": p1.labels.array, "series": ref.meta["series_instance_uid"]}

    # P2, feet first: an ambiguous CTVn pair, and an older RTSTRUCT of the same series that must lose.
    p2 = small_ct_phantom(1001, position="FFS")
    ref = write_patient_series(p2, root / "export_b" / "mixed", patient_id=PATIENTS["P2"][0],
                               patient_name=PATIENTS["P2"][1], shuffle_seed=2)
    write_named_rtstruct(root / "export_b" / "mixed" / "RS.new.dcm", p2.labels.array, ref,
                         [("Bladder", (BLADDER,)), ("Rectum", (RECTUM,)), ("CTV_N", (CTVN,)),
                          ("CTV Nodes", (CTVN,)), ("CTVp", (CTVP,))], date_time="20240305101500")
    write_named_rtstruct(root / "old_plans" / "RS.old.dcm", p2.labels.array, ref,
                         [("Blase", (BLADDER,)), ("Rektum", (RECTUM,))], date_time="20190101080000")
    truth["P2"] = {"labels": p2.labels.array, "series": ref.meta["series_instance_uid"]}

    # P3, oblique, its files split over two folders; no CTVn drawn, and an empty CTV_LN ROI.
    p3 = small_ct_phantom(1002, tilt_degrees=(12.0, 0.0, 0.0))
    ref = write_patient_series(p3, root / "export_c" / "tmp", patient_id=PATIENTS["P3"][0],
                               patient_name=PATIENTS["P3"][1], shuffle_seed=3)
    files = sorted((root / "export_c" / "tmp").iterdir())
    (root / "export_c" / "more").mkdir()
    for path in files[::2]:
        path.rename(root / "export_c" / "more" / path.name)
    ref = ref.with_array(ref.array, meta={**ref.meta, "files": [str(p) for p in sorted(
        (root / "export_c").rglob("*")) if p.is_file()]})
    write_named_rtstruct(root / "export_c" / "rs3.dcm", p3.labels.array, ref,
                         [("bladder", (BLADDER,)), ("Rectum", (RECTUM,)), ("CTV-UV", (CTVP,)), ("CTV_LN", (99,))])
    truth["P3"] = {"labels": p3.labels.array, "series": ref.meta["series_instance_uid"]}

    # P4: an RTSTRUCT whose CT series was not exported.
    p4 = small_ct_phantom(1003)
    ref = write_patient_series(p4, root / "gone", patient_id=PATIENTS["P4"][0], patient_name=PATIENTS["P4"][1])
    write_named_rtstruct(root / "export_d" / "orphan.dcm", p4.labels.array, ref,
                         [("Bladder", (BLADDER,)), ("Rectum", (RECTUM,))])
    for path in (root / "gone").iterdir():
        path.unlink()
    (root / "gone").rmdir()

    # P5: a CT series nobody contoured; and a file that is not DICOM.
    p5 = small_ct_phantom(1004)
    write_patient_series(p5, root / "export_d" / "ct5", patient_id=PATIENTS["P5"][0], patient_name=PATIENTS["P5"][1],
                         shuffle_seed=5)
    (root / "export_d" / "README.txt").write_text("exported 2024-03-05 by the planning system\n")
    return truth


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dicom")
    truth = build_tree(root)
    work = tmp_path_factory.mktemp("datasets")
    return {"root": root, "truth": truth, "work": work}


@pytest.fixture(scope="module")
def imported(cohort) -> dict:
    out = cohort["work"] / "clinic"
    code = main(["dataset", "import", str(cohort["root"]), "--out", str(out), "--split", "2:1:0", "--seed", "3"])
    assert code == 0
    key = json.loads((cohort["work"] / "clinic.key.json").read_text())
    case_of = {patient: next(cid for cid, entry in key["cases"].items() if entry["patient_id"] == pid)
               for patient, (pid, _) in PATIENTS.items() if any(e["patient_id"] == pid for e in key["cases"].values())}
    return {"out": out, "key": key, "case_of": case_of, "dataset": load_dataset(out, verify=True),
            "manifest": json.loads((out / "dataset.json").read_text())}


def test_rtstructs_pair_with_their_series_by_uid_not_by_folder(imported, cohort):
    key, case_of = imported["key"], imported["case_of"]
    assert set(case_of) == {"P1", "P2", "P3"}
    assert sorted(key["cases"]) == ["case-0001", "case-0002", "case-0003"]
    for patient, case_id in case_of.items():
        assert key["cases"][case_id]["series_instance_uid"] == cohort["truth"][patient]["series"]
    # P1's RTSTRUCT sits in P2's image folder and still goes with P1's series.
    assert key["cases"][case_of["P1"]]["rtstruct_file"].endswith("RS.a91f.dcm")
    assert key["cases"][case_of["P2"]]["rtstruct_file"].endswith("RS.new.dcm")
    assert key["cases"][case_of["P2"]]["superseded_rtstructs"][0].endswith("RS.old.dcm")


def test_skipped_items_are_reported_with_their_reason(imported):
    reasons = {item["reason"] for item in imported["manifest"]["import"]["skipped"]}
    assert reasons == {"superseded by a newer RTSTRUCT of the same series",
                       "references an image series that is not in the tree",
                       "no RTSTRUCT references this image series"}
    details = {entry["reason"]: entry for entry in imported["key"]["skipped"].values()}
    assert details["references an image series that is not in the tree"]["file"].endswith("orphan.dcm")
    assert details["no RTSTRUCT references this image series"]["patient_id"] == PATIENTS["P5"][0]
    counts = imported["manifest"]["import"]["counts"]
    assert counts["non_dicom_files"] == 1 and counts["rtstructs"] == 5 and counts["image_series"] == 4
    assert any(path.endswith("README.txt") for path in imported["key"]["non_dicom_files"])


def test_name_mapping_report(imported):
    cases = imported["manifest"]["import"]["cases"]
    p1, p2, p3 = (cases[imported["case_of"][p]]["structures"] for p in ("P1", "P2", "P3"))
    assert {name: (e["status"], e.get("roi")) for name, e in p1.items()} == {
        "Bladder": ("matched", "BLADDER_O"), "Rectum": ("matched", "rectum"),
        "CTVn": ("matched", "CTVn_4500"), "CTVp": ("matched", "CTV-UV")}
    excluded = {e["roi"] for e in cases[imported["case_of"]["P1"]]["rois"]["excluded"]}
    assert excluded == {"Rectum_PRV05", "z_opt_bladder"}
    assert cases[imported["case_of"]["P1"]]["rois"]["unmatched"] == ["BODY"]
    assert p2["CTVn"] == {"status": "ambiguous", "candidates": ["CTV_N", "CTV Nodes"]}
    assert p2["Bladder"]["roi"] == "Bladder" and p2["CTVp"]["roi"] == "CTVp"  # from the newer RTSTRUCT
    assert p3["CTVn"]["status"] == "missing" and "empty" in p3["CTVn"]["notes"][0]
    statuses = {case["id"]: case["structures"] for case in imported["manifest"]["cases"]}
    assert statuses[imported["case_of"]["P2"]]["CTVn"] == "ambiguous"
    assert statuses[imported["case_of"]["P3"]] == {"Bladder": "matched", "Rectum": "matched",
                                                   "CTVn": "missing", "CTVp": "matched"}


def test_rasterised_labels_match_the_label_maps_the_rtstructs_came_from(imported, cohort):
    dataset = imported["dataset"]
    for patient, case_id in imported["case_of"].items():
        case = dataset.case(case_id)
        labels = load_image(case.labels).array
        truth = cohort["truth"][patient]["labels"]
        assert labels.shape == truth.shape
        for value, name in zip(ALL, ("Bladder", "Rectum", "CTVn", "CTVp")):
            if case.structures[name] == "matched":
                assert dice(labels == value, truth == value) >= 0.98, (patient, name)
            else:
                assert not (labels == value).any(), (patient, name)


def test_image_grid_is_the_dicom_grid_feet_first_and_oblique(imported, cohort):
    dataset = imported["dataset"]
    p2 = load_image(dataset.case(imported["case_of"]["P2"]).image)
    p3 = load_image(dataset.case(imported["case_of"]["P3"]).image)
    assert p2.direction[2, 2] == pytest.approx(-1.0) or p2.direction[2, 2] == pytest.approx(1.0)
    assert abs(p3.direction[1, 2]) > 0.2  # the oblique slice normal survives into the NIfTI
    reference = small_ct_phantom(1002, tilt_degrees=(12.0, 0.0, 0.0)).image
    assert np.allclose(p3.index_to_lps, reference.index_to_lps, atol=0.01)


def test_dataset_holds_no_identifier_and_the_key_lives_outside(imported, cohort):
    out = imported["out"]
    secrets = [value for pair in PATIENTS.values() for value in pair]
    secrets += [entry["series_instance_uid"] for entry in imported["key"]["cases"].values()]
    secrets += [entry["study_instance_uid"] for entry in imported["key"]["cases"].values()]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                import gzip
                data = gzip.decompress(data)
            for secret in secrets:
                assert secret.encode() not in data, (path, secret)
    assert sorted(p.name for p in out.iterdir()) == ["case-0001", "case-0002", "case-0003", "dataset.json"]
    key_file = out.parent / "clinic.key.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not any(p.name.startswith(".") for p in out.parent.iterdir() if p.name != key_file.name)


def test_split_is_drawn_per_patient_and_recorded(imported):
    splits = [case.split for case in imported["dataset"].cases]
    assert sorted(splits) == ["train", "train", "validation"]
    assert imported["manifest"]["import"]["split"] == {"ratio": "2:1:0", "seed": 3, "by": "patient"}


def test_user_mapping_file_settles_the_ambiguous_pair(imported, cohort, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"map": {"CTV_N": "CTVn"}, "exclude": ["ctv nodes"]}))
    out = cohort["work"] / "clinic"
    assert main(["dataset", "import", str(cohort["root"]), "--out", str(out), "--names", str(names)]) != 0
    assert main(["dataset", "import", str(cohort["root"]), "--out", str(out), "--names", str(names),
                 "--overwrite"]) == 0
    dataset = load_dataset(out, verify=True)
    key = json.loads((cohort["work"] / "clinic.key.json").read_text())
    p2 = next(cid for cid, e in key["cases"].items() if e["patient_id"] == PATIENTS["P2"][0])
    assert dataset.case(p2).structures["CTVn"] == "matched"
    labels = load_image(dataset.case(p2).labels).array
    assert dice(labels == CTVN, cohort["truth"]["P2"]["labels"] == CTVN) >= 0.98
    assert all(case.split is None for case in dataset.cases)


def test_foreign_folders_and_bad_options_are_refused_in_one_line(cohort, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_bytes(b"mine")
    assert main(["dataset", "import", str(cohort["root"]), "--out", str(foreign)]) == 6
    assert (foreign / "thesis.docx").read_bytes() == b"mine"
    assert main(["dataset", "import", str(cohort["root"]), "--out", str(tmp_path / "d"),
                 "--key", str(tmp_path / "d" / "key.json")]) == 5
    bad_names = tmp_path / "names.json"
    bad_names.write_text(json.dumps({"map": {"Blase": "Kidney"}}))
    assert main(["dataset", "import", str(cohort["root"]), "--out", str(tmp_path / "d"), "--names",
                 str(bad_names), "--family", "ct"]) == 2
    assert main(["dataset", "import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 2
    assert main(["dataset", "import", str(cohort["root"]), "--out", str(tmp_path / "d"), "--split", "1:x"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 5 and all(line.startswith("cervixautoseg dataset: error:") for line in lines), err
    assert "Traceback" not in err and not (tmp_path / "d").exists()


def test_manifest_errors_are_one_line(imported, tmp_path):
    assert is_dataset(imported["out"]) and not is_dataset(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        load_dataset(bad)
    document = dict(imported["manifest"])
    document["cases"] = [{**document["cases"][0], "image": "/etc/passwd"}]
    (bad / "dataset.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match="not a path inside the dataset folder"):
        load_dataset(bad)


def test_mr_family_is_chosen_from_the_images_and_the_tumour_is_painted_over_the_organ(tmp_path):
    """An MR series with an organ ROI that contains the tumour ROI, as planning systems draw them."""
    from CervixAutoSegLib.phantom import make_mr_phantom

    case = make_mr_phantom(2000, matrix=64, pixel_spacing_mm=5.0, slice_thickness_mm=6.0)
    reference = write_patient_series(case, tmp_path / "dicom" / "mr", patient_id="MR-1", patient_name="Mr^One",
                                     shuffle_seed=4)
    write_named_rtstruct(tmp_path / "dicom" / "rs.dcm", case.labels.array, reference,
                         [("Uterus", (1, 2)), ("GTV", (2,)), ("GTV_PRV", (2,))])
    assert main(["dataset", "import", str(tmp_path / "dicom"), "--out", str(tmp_path / "mr")]) == 0
    dataset = load_dataset(tmp_path / "mr", verify=True)
    assert dataset.family == "mr" and [s.name for s in dataset.structures] == ["Uterus_Cx_Vagina", "GTVp"]
    (only,) = dataset.cases
    assert only.modality == "MR" and only.structures == {"Uterus_Cx_Vagina": "matched", "GTVp": "matched"}
    labels = load_image(only.labels).array
    truth = case.labels.array
    assert dice(labels == 2, truth == 2) >= 0.98 and dice(labels > 0, truth > 0) >= 0.98
    notes = json.loads((tmp_path / "mr" / "dataset.json").read_text())["import"]["cases"][only.id]["notes"]
    assert notes and "GTVp overlaps Uterus_Cx_Vagina" in notes[0]


def test_a_damaged_series_and_an_rtstruct_matching_nothing_are_skipped_with_their_reason(tmp_path, capsys):
    good = small_ct_phantom(1005, matrix=48, pixel_mm=9.0, slice_mm=10.0)
    reference = write_patient_series(good, tmp_path / "dicom" / "good", patient_id="OK-1", patient_name="Ok^One")
    write_named_rtstruct(tmp_path / "dicom" / "good" / "rs.dcm", good.labels.array, reference, [("Bladder", (1,))])
    cut = small_ct_phantom(1006, matrix=48, pixel_mm=9.0, slice_mm=10.0)
    reference = write_patient_series(cut, tmp_path / "dicom" / "cut", patient_id="CUT-2", patient_name="Cut^Two")
    write_named_rtstruct(tmp_path / "dicom" / "cut" / "rs.dcm", cut.labels.array, reference, [("Bladder", (1,))])
    victim = Path(reference.meta["files"][3])
    victim.write_bytes(victim.read_bytes()[:-500])  # an export cut short inside the pixel data
    odd = small_ct_phantom(1007, matrix=48, pixel_mm=9.0, slice_mm=10.0)
    reference = write_patient_series(odd, tmp_path / "dicom" / "odd", patient_id="ODD-3", patient_name="Odd^Three")
    write_named_rtstruct(tmp_path / "dicom" / "odd" / "rs.dcm", odd.labels.array, reference,
                         [("Harnblase", (1,)), ("Enddarm", (2,))])

    assert main(["dataset", "import", str(tmp_path / "dicom"), "--out", str(tmp_path / "ds")]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert [case["id"] for case in manifest["cases"]] == ["case-0001"]
    assert manifest["cases"][0]["structures"] == {"Bladder": "matched", "Rectum": "missing", "CTVn": "missing",
                                                 "CTVp": "missing"}
    reasons = sorted(item["reason"] for item in manifest["import"]["skipped"])
    assert reasons == ["no ROI matched a structure of the family", "the image series cannot be read"]
    assert victim.name in printed and "'Harnblase', 'Enddarm'" in printed
    # A mapping file brings the German names in.
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"map": {"harnblase": "Bladder", "End*": "Rectum"}}))
    assert main(["dataset", "import", str(tmp_path / "dicom"), "--out", str(tmp_path / "ds2"), "--names", str(names)]) == 0
    statuses = [case["structures"] for case in json.loads((tmp_path / "ds2" / "dataset.json").read_text())["cases"]]
    assert {"Bladder": "matched", "Rectum": "matched", "CTVn": "missing", "CTVp": "missing"} in statuses
