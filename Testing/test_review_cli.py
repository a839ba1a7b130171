"""``cervixautoseg review start|grade|export|summary|agreement`` end to end (issue 16, items 1, 3, 5, 7), on a
real DICOM CT, the AI's output folder and a clinic's manual RTSTRUCT; every source kind of a review."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from review_cases import AI_EXTENT, ai_output, ct_series, labels_for, manual_rtstruct

from CervixAutoSegLib import cli
from CervixAutoSegLib.ct.family import CT_STRUCTURES
from CervixAutoSegLib.review.grades_csv import read_grades_csv
from CervixAutoSegLib.review.model import CSV_COLUMNS
from CervixAutoSegLib.review.session import CONTOURS_FILE, read_manifest
from CervixAutoSegLib.segfile import SegmentSpec, read_segmentation_nrrd, write_segments_nrrd


@pytest.fixture(autouse=True)
def review_command(monkeypatch):
    """``review`` in the command table: a bridge while cli.py's one-line registration waits to be committed
    (cli.py is shared); a no-op once it is there."""
    if "review" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "review"))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-case")
    reference = ct_series(root / "dicom")
    return {"root": root, "reference": reference, "dicom": root / "dicom", "ai": ai_output(root / "ai", reference),
            "manual": manual_rtstruct(root / "manual.dcm", reference)}


def run(*argv, expect: int = 0, capsys=None) -> str:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr() if capsys else None
    assert code == expect, out
    return (out.out + out.err) if out else ""


def test_open_review_grade_export_and_summarise(case, tmp_path, capsys):
    review = tmp_path / "review"
    text = run("review", "start", "--image", case["dicom"], "--segmentation", case["ai"], "--reviewer", "Dr A",
               "--out", review, capsys=capsys)
    manifest = read_manifest(review)
    assert manifest.case_id.startswith("case-") and "RT0001" not in json.dumps(manifest.to_json())
    assert [item.id for item in manifest.items] == ["Bladder", "Rectum", "CTVn", "CTVp"]
    assert manifest.items[0].slices == tuple(range(3, 9)) and "Bladder: slices 3-8 (8 to grade)" in text
    assert {(f["structure"], f["slice_index"]) for f in manifest.flags} >= {("Bladder", 3), ("CTVp", 8)}
    z = manifest.geometry.z_mm
    assert np.allclose(np.diff(z), 2.5)
    segments = read_segmentation_nrrd(review / CONTOURS_FILE)
    assert [s.name for s in segments.segments] == ["Bladder", "Rectum", "CTVn", "CTVp"]
    assert segments.grid.same_grid(case["reference"])

    for k, grade in ((2, "acceptable"), (3, "minor"), (4, "Major revision"), (9, "not_assessable")):
        run("review", "grade", review, "--structure", "bladder", "--slice", k, "--grade", grade, capsys=capsys)
    out = run("review", "grade", review, "--structure", "CTVp", "--slice", 8, "--grade", "unacceptable",
              "--comment", "=HYPERLINK(\"x\")  misses\nparametrium", capsys=capsys)
    assert "Dr A: CTVp slice 8, z 20.0 mm: unacceptable (5 graded)" in out
    grades = tmp_path / "grades.csv"
    run("review", "export", review, "--out", grades, capsys=capsys)
    with open(grades, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 6
    ctvp = rows[-1]
    assert ctvp[2:5] == ["CTVp", "8", "20.000"] and ctvp[7] == "'=HYPERLINK(\"x\") misses parametrium"
    records = read_grades_csv(grades)
    assert {r.comment for r in records} >= {'=HYPERLINK("x") misses parametrium'}  # the apostrophe is removed
    assert {r.blinded_source for r in records} == {""} and {r.series_uid for r in records} == {manifest.series_uid}

    out = run("review", "summary", grades, "--out", tmp_path / "summary", capsys=capsys)
    bladder_line = next(line for line in out.splitlines() if line.startswith("Bladder"))
    assert bladder_line.split()[1:9] == ["1", "(33.33%)", "1", "(33.33%)", "1", "(33.33%)", "0", "(0.00%)"]
    assert (tmp_path / "summary" / "summary.png").read_bytes()[:4] == b"\x89PNG"
    table = list(csv.DictReader(open(tmp_path / "summary" / "table2.csv", encoding="utf-8")))
    bladder = next(r for r in table if r["scope"] == "Cohort" and r["structure"] == "Bladder")
    assert (bladder["n"], bladder["acceptable"], bladder["not_assessable"]) == ("3", "1", "1")
    assert "Mean percentage" in (tmp_path / "summary" / "table2.md").read_text()


def test_two_reviewers_and_their_agreement(case, tmp_path, capsys):
    review = tmp_path / "review"
    for reviewer in ("Dr A", "Dr B"):
        run("review", "start", "--image", case["dicom"], "--segmentation", case["ai"], "--reviewer", reviewer,
            "--out", review, capsys=capsys)
    run("review", "grade", review, "--structure", "Bladder", "--slice", 3, "--grade", "minor", expect=2,
        capsys=capsys)  # which reviewer? one line asking for --reviewer
    for reviewer, grades in (("Dr A", [1, 1, 2, 4, 1]), ("Dr B", [1, 2, 2, 1, 1])):
        for k, rank in zip(range(3, 8), grades):
            run("review", "grade", review, "--reviewer", reviewer, "--structure", "Bladder", "--slice", k,
                "--grade", str(rank), capsys=capsys)
    out = run("review", "agreement", review, "--out", tmp_path / "agreement", capsys=capsys)
    assert "Dr A vs Dr B" in out and "1 slice(s) where two reviewers differ by two grades or more" in out
    disagreements = list(csv.DictReader(open(tmp_path / "agreement" / "disagreements.csv", encoding="utf-8")))
    assert [(d["slice_index"], d["grade_a"], d["grade_b"]) for d in disagreements] == [("6", "unacceptable",
                                                                                         "acceptable")]
    rows = list(csv.DictReader(open(tmp_path / "agreement" / "agreement.csv", encoding="utf-8")))
    assert {r["statistic"] for r in rows} == {"pair", "alpha"} and rows[0]["exact_pct"] == "60.0"


def test_blinded_review_hides_the_source_and_only_the_key_tells(case, tmp_path, capsys):
    review, key = tmp_path / "blind", tmp_path / "keys" / "key.json"
    run("review", "start", "--image", case["dicom"], "--segmentation", case["manual"], "--segmentation",
        case["ai"], "--blinded", "--key", key, "--reviewer", "Dr A", "--out", review, "--seed", "4", capsys=capsys)
    manifest = read_manifest(review)
    text = (review / "review.json").read_text()
    assert "manual" not in text and str(case["ai"]) not in text and manifest.flags == ()
    ids = [item.id for item in manifest.items]
    assert sorted(ids) == sorted(f"{s.name}/{x}" for s in CT_STRUCTURES for x in "AB")
    assert ids != sorted(ids)  # random order
    colours = {}
    for item in manifest.items:
        colours.setdefault(item.structure, set()).add(item.color)
    assert all(len(c) == 1 for c in colours.values())  # one colour per structure
    roles = json.loads(key.read_text())["reviews"][manifest.review_id]["items"]
    assert sorted(roles.values()) == ["ai"] * 4 + ["manual"] * 4
    manual_ctvn = next(i for i in manifest.items if i.structure == "CTVn" and roles[i.id] == "manual")
    assert manual_ctvn.slices == (5, 6, 7)  # the RTSTRUCT's own contours, rasterised on the image
    for item in manifest.items:
        grade = "acceptable" if roles[item.id] == "manual" else "major"
        run("review", "grade", review, "--structure", item.id, "--slice", item.slices[0], "--grade", grade,
            capsys=capsys)
    out = run("review", "summary", review, "--out", tmp_path / "s", capsys=capsys)
    assert "AI vs manual" in out and "-100.00 points" in out
    run("review", "export", review, "--out", tmp_path / "g.csv", capsys=capsys)
    assert {r.blinded_source for r in read_grades_csv(tmp_path / "g.csv")} == {"ai", "manual"}
    moved = tmp_path / "moved.json"
    key.rename(moved)
    err = run("review", "export", review, "--out", tmp_path / "g2.csv", expect=2, capsys=capsys)
    assert "cannot be read: pass --key FILE" in err
    run("review", "export", review, "--out", tmp_path / "g2.csv", "--key", moved, capsys=capsys)


def test_a_seg_nrrd_cropped_like_slicer_and_a_label_map_are_sources_too(case, tmp_path, capsys):
    reference = case["reference"]
    labels = labels_for(reference)
    crop = type(reference)(array=np.zeros((8, 10, 12), np.uint8), spacing=reference.spacing,
                           origin=reference.index_to_physical(np.array([2.0, 1.0, 2.0])), direction=reference.direction)
    mask = np.asarray(labels.array)[2:10, 1:11, 2:14] == 1
    write_segments_nrrd(tmp_path / "cropped.seg.nrrd", crop,
                        [SegmentSpec("s1", "urinary bladder", (1.0, 1.0, 0.0), "", mask, 1)])
    run("review", "start", "--image", case["dicom"], "--segmentation", tmp_path / "cropped.seg.nrrd", "--reviewer",
        "Dr A", "--out", tmp_path / "seg", capsys=capsys)
    item, = read_manifest(tmp_path / "seg").items
    assert item.id == "Bladder" and item.slices == tuple(range(AI_EXTENT[1][0], AI_EXTENT[1][1] + 1))
    assert item.color == (255, 255, 0)

    from CervixAutoSegLib.image_io import write_image

    write_image(labels, tmp_path / "labels.nii.gz")  # no labels.json beside it: the CT catalogue names values
    run("review", "start", "--image", case["dicom"], "--segmentation", f"manual={tmp_path / 'labels.nii.gz'}",
        "--segmentation", case["ai"], "--reviewer", "Dr A", "--out", tmp_path / "both", capsys=capsys)
    ids = [i.id for i in read_manifest(tmp_path / "both").items]
    assert ids[:2] == ["Bladder (manual)", "Rectum (manual)"] and "CTVp (ai)" in ids


@pytest.mark.parametrize("argv,message", [
    (["--blinded"], "--blinded needs --key FILE"),
    (["--case-id", "RT0001"], "must not be a patient identifier"),
    (["--segmentation", "missing.dcm"], "does not exist"),
])
def test_bad_starts_are_one_line(case, tmp_path, capsys, argv, message):
    base = ["review", "start", "--image", case["dicom"], "--reviewer", "Dr A", "--out", tmp_path / "r"]
    if "--segmentation" not in argv:
        base += ["--segmentation", case["ai"]]
    code = cli.main([str(a) for a in base + argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_another_review_in_the_same_folder_is_refused(case, tmp_path, capsys):
    run("review", "start", "--image", case["dicom"], "--segmentation", case["ai"], "--reviewer", "Dr A", "--out",
        tmp_path / "r", capsys=capsys)
    err = run("review", "start", "--image", case["dicom"], "--segmentation", case["manual"], "--reviewer", "Dr B",
              "--out", tmp_path / "r", expect=5, capsys=capsys)
    assert "holds the review of other inputs" in err


def test_a_csv_from_a_spreadsheet_is_read_and_a_bad_row_is_named(tmp_path, capsys):
    good = tmp_path / "sheet.csv"
    good.write_text("\ufeffreviewer,case_id,structure,slice_index,grade,extra\n"
                    "Dr X,c1,Bladder,3,Minor revision,x\n\nDr X,c1,Bladder,4,acceptable,\n", encoding="utf-8")
    out = run("review", "summary", good, capsys=capsys)
    assert "1 (50.00%)" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,structure,slice_index,reviewer,grade\nc1,Bladder,-3,Dr X,minor\n", encoding="utf-8")
    err = run("review", "summary", bad, expect=2, capsys=capsys)
    assert "bad.csv line 2: slice_index '-3' is not a slice index" in err
    assert "is not a grades CSV: column(s) case_id" in run("review", "agreement", Path(__file__), expect=2, capsys=capsys)
