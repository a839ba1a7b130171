"""Per-case plausibility (CervixAutoSegLib.qa.case_features / plausibility): ranges learned from label
maps, verdicts with reasons, the input check; and how report.json, the summary, preview.png and
the Slicer panel's controller say it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from CervixAutoSegLib.qa import assess
from CervixAutoSegLib.qa.case_features import case_features
from CervixAutoSegLib.qa.plausibility import CHECK, IMPLAUSIBLE, PLAUSIBLE, judge_case, learn_ranges
from CervixAutoSegLib.structures import ANATOMICAL_STRUCTURE, CTV, ORGAN, UTERUS, Structure
from CervixAutoSegLib.volume import Volume

A = Structure(1, "Alpha", "alpha", (200, 80, 80), ORGAN, ANATOMICAL_STRUCTURE, UTERUS)
B = Structure(2, "Beta", "beta", (80, 200, 80), CTV, ANATOMICAL_STRUCTURE, UTERUS)
STRUCTURES = (A, B)
SPACING = (2.0, 2.0, 3.0)


def synthetic_case(alpha_radius_mm: float = 20.0, beta_offset_mm: float = 0.0, slices: int = 40,
                   direction=np.eye(3), hu_tissue: int = 40) -> tuple[Volume, np.ndarray]:
    """A CT-like body (ellipse, HU) with two spheres: Alpha at the centre, Beta 40 mm to the left."""
    shape = (slices, 100, 120)
    middle = (np.array(shape[::-1], dtype=float) - 1) / 2 * SPACING  # the grid centred on LPS (0, 0, 0)
    volume = Volume(np.zeros(shape, np.int16), SPACING, -np.asarray(direction) @ middle, direction, modality="CT")
    k, j, i = np.indices(shape)
    lps = volume.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))
    centre = np.zeros(3)
    body = (lps[..., 0] / 110) ** 2 + (lps[..., 1] / 80) ** 2 <= 1
    image = np.where(body, hu_tissue, -1000).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[np.linalg.norm(lps - centre, axis=-1) <= alpha_radius_mm] = 1
    labels[np.linalg.norm(lps - centre - [40.0 + beta_offset_mm, 0, 0], axis=-1) <= 12.0] = 2
    return volume.with_array(image), labels


@pytest.fixture(scope="module")
def ranges():
    cases = [synthetic_case(alpha_radius_mm=r, beta_offset_mm=o) for r, o in ((18, -3), (20, 0), (22, 3))]
    return learn_ranges(cases, STRUCTURES, source="three synthetic cases")


def test_features_are_physical_whatever_the_grid(ranges):
    image, labels = synthetic_case()
    features = case_features(image, labels, STRUCTURES)
    alpha = features["structures"]["Alpha"]
    assert alpha["volume_ml"] == pytest.approx(4 / 3 * np.pi * 20 ** 3 / 1000, rel=0.05)
    assert alpha["extent_mm"] == pytest.approx(42.0, abs=3.0) and alpha["pieces"] == 1
    assert abs(alpha["body_lr"]) < 0.05 and alpha["inside_body"] == 1.0
    assert features["pairs"]["Alpha|Beta"]["dx_mm"] == pytest.approx(-40.0, abs=1.0)
    assert features["input"]["scan_extent_mm"] == pytest.approx(120.0)
    flipped_image, flipped_labels = synthetic_case(direction=np.diag([-1.0, -1.0, 1.0]))
    flipped = case_features(flipped_image, flipped_labels, STRUCTURES)
    assert flipped["structures"]["Alpha"]["volume_ml"] == pytest.approx(alpha["volume_ml"], rel=0.02)
    assert flipped["pairs"]["Alpha|Beta"]["dx_mm"] == pytest.approx(-40.0, abs=1.0)  # LPS, not array order
    assert ranges["structures"]["Alpha"]["volume_ml"]["n"] == 3 and ranges["cases"] == 3


def test_within_the_training_range_is_plausible_just_outside_check_far_outside_implausible(ranges):
    verdicts = {}
    for radius in (20.0, 24.5, 40.0):
        image, labels = synthetic_case(alpha_radius_mm=radius)
        verdicts[radius] = judge_case(image, labels, STRUCTURES, ranges)
    assert verdicts[20.0]["verdict"] == PLAUSIBLE and verdicts[20.0]["reasons"] == []
    assert verdicts[24.5]["structures"]["Alpha"]["verdict"] == CHECK
    far = verdicts[40.0]
    assert far["verdict"] == IMPLAUSIBLE and far["structures"]["Alpha"]["verdict"] == IMPLAUSIBLE
    assert far["structures"]["Beta"]["verdict"] == PLAUSIBLE
    assert any(r.startswith("Alpha volume") and "far above the training range" in r for r in far["reasons"])


def test_pieces_position_and_missing_structures_are_judged(ranges):
    image, labels = synthetic_case()
    labels = labels.copy()
    for x in (10, 30, 50, 70, 90):  # five extra pieces of Beta
        labels[5:10, 80:90, x:x + 5] = 2
    judged = judge_case(image, labels, STRUCTURES, ranges)
    assert any("number of separate pieces 6" in r for r in judged["structures"]["Beta"]["reasons"])
    image, labels = synthetic_case(beta_offset_mm=40.0)
    judged = judge_case(image, labels, STRUCTURES, ranges)
    assert any("Alpha relative to Beta: left-right offset" in r for r in judged["structures"]["Alpha"]["reasons"])
    image, labels = synthetic_case()
    labels = np.where(labels == 2, 0, labels).astype(np.uint8)
    judged = judge_case(image, labels, STRUCTURES, ranges)
    assert judged["structures"]["Beta"]["verdict"] == IMPLAUSIBLE
    assert "Beta was not found, but every one of the 3 training cases has it" in judged["reasons"]


def test_the_input_check_reads_intensities_and_the_scan_length(ranges):
    image, labels = synthetic_case(hu_tissue=700)  # a body of bone density: not a planning CT as trained
    judged = judge_case(image, labels, STRUCTURES, ranges)
    assert judged["input"]["verdict"] == IMPLAUSIBLE and any("median HU in the body" in r for r in judged["reasons"])
    image, labels = synthetic_case(slices=8)  # 24 mm: shorter than the anatomy every training case spans
    labels = labels.copy()
    judged = assess(image, Volume(labels, SPACING, image.origin, image.direction), STRUCTURES,
                    {"plausibility": ranges})
    assert judged["verdict"] == IMPLAUSIBLE
    assert any("cannot hold the whole pelvis" in r for r in judged["reasons"])
    assert any("reach the first or last image slice" in r for r in judged["reasons"])


def test_without_learned_ranges_everything_is_plausible_and_says_so():
    image, labels = synthetic_case(alpha_radius_mm=40.0)
    judged = judge_case(image, labels, STRUCTURES, {})
    assert judged["verdict"] == PLAUSIBLE and judged["learned"] is False


# ------------------------------------------------------------------ how it is said
def implausible_report(ranges) -> dict:
    from CervixAutoSegLib.report import build_report

    image, labels = synthetic_case(alpha_radius_mm=40.0)
    card = type("Card", (), {"id": "m", "version": "1", "family": "ct", "networks": (), "intended_use": "",
                             "validation": {}, "qa": {"plausibility": ranges}})()
    volume = Volume(labels, SPACING, image.origin, image.direction)
    return json.loads(json.dumps(build_report(volume=image, input_path=None, card=card, device={}, timings={},
                                              labels=volume, structures=STRUCTURES)))


def test_report_summary_and_panel_line_say_the_verdict_with_reasons(ranges):
    from CervixAutoSegLib.report import qa_summary_lines, qa_warning

    report = implausible_report(ranges)
    qa = report["qa"]
    assert qa["verdict"] == IMPLAUSIBLE and qa["plausibility"]["structures"]["Alpha"]["verdict"] == IMPLAUSIBLE
    assert {"slices", "flags", "kinds", "absent", "flagged_slices", "thresholds"} <= set(qa)
    lines = qa_summary_lines(report)
    assert lines[0].startswith("QA: IMPLAUSIBLE") and "  Alpha: implausible" in lines
    assert any("Alpha volume" in line for line in lines)
    warning = qa_warning(report)
    assert warning.startswith("Result implausible: Alpha implausible (Alpha volume")
    assert qa_warning({"qa": {"verdict": PLAUSIBLE}}) == "" and qa_summary_lines({}) == []


def test_preview_carries_the_verdict(ranges, tmp_path):
    from CervixAutoSegLib.preview import verdict_lines, write_preview

    report = implausible_report(ranges)
    lines = verdict_lines(report["qa"])
    assert lines[0] == ("QA verdict: IMPLAUSIBLE", "#ff1744") and lines[1][0].startswith("- Alpha volume")
    image, labels = synthetic_case(alpha_radius_mm=40.0)
    path = write_preview(tmp_path / "preview.png", image, Volume(labels, SPACING, image.origin, image.direction),
                         STRUCTURES, {1: 268.0, 2: 7.2}, title="m v1", quality=report["qa"])
    assert path.stat().st_size > 10_000 and verdict_lines(None) == []


def test_the_panel_shows_the_warning_and_the_flagged_slices_worst_first(ranges):
    from CervixAutoSegLib.controller import AutoContourController, DeviceInfo, flagged_slices

    report = implausible_report(ranges)
    report["qa"]["slices"] = [
        {"structure": "Alpha", "slice": 3, "score": 0.6, "flagged": True, "reasons": ["a"],
         "position_lps_mm": [1.0, 2.0, 3.0]},
        {"structure": "Beta", "slice": 9, "score": 0.9, "flagged": True, "reasons": ["b", "c"],
         "position_lps_mm": [4.0, 5.0, 6.0]},
        {"structure": "Beta", "slice": 10, "score": 0.2, "flagged": False, "reasons": [], "position_lps_mm": None}]
    report["qa"]["flagged_slices"] = 2
    rows = flagged_slices(report)
    assert [(r.structure, r.slice) for r in rows] == [("Beta", 9), ("Alpha", 3)]
    assert rows[0].position_ras == (-4.0, -5.0, 6.0) and rows[0].cells() == ("Beta", "9", "0.90", "b; c")
    controller = AutoContourController(devices=DeviceInfo, job_factory=lambda command: None)
    controller._show_quality(report)
    view = controller.view
    assert view.qa_verdict == IMPLAUSIBLE and view.qa_warning.startswith("Result implausible")
    assert view.qa_summary.startswith("2 slice(s) flagged") and controller.qa_row_position(1) == (-1.0, -2.0, 3.0)
    assert controller.qa_row_position(5) is None
    controller._show_quality({})
    assert view.qa_rows == [] and view.qa_warning == ""


def _voxel_list_features(image: Volume, mask: np.ndarray, box: tuple, body) -> dict:
    """The oracle: every feature from the list of the structure's voxel indices."""
    k, j, i = np.nonzero(mask)
    k, j, i = k + box[0].start, j + box[1].start, i + box[2].start
    lps = image.index_to_physical(np.stack([i, j, k], axis=1).astype(float))
    inside = body.mask[k, np.minimum(j // body.stride[0], body.mask.shape[1] - 1),
                       np.minimum(i // body.stride[1], body.mask.shape[2] - 1)]
    return {"volume_ml": len(k), "s_range_mm": [lps[:, 2].min(), lps[:, 2].max()], "inside_body": inside.mean(),
            "centre_lps_mm": image.index_to_physical(np.array([i.mean(), j.mean(), k.mean()])),
            "slices": np.unique(k)}


@pytest.mark.parametrize("direction", [
    np.eye(3), np.diag([-1.0, 1.0, -1.0]),  # head first; feet first prone
    np.linalg.qr(np.array([[1.0, 0.3, 0.2], [-0.2, 1.0, 0.4], [0.1, -0.3, 1.0]]))[0],  # oblique
    np.column_stack([[1, 0, 0], [0, 1, 0], [0, np.sin(0.3), np.cos(0.3)]]),  # gantry tilt: sheared
], ids=["head_first", "feet_first_prone", "oblique", "sheared"])
def test_structure_features_from_projections_equal_the_voxel_list_ones(direction):
    from scipy import ndimage

    from CervixAutoSegLib.qa.case_features import body_of, structure_features

    image, labels = synthetic_case(direction=direction)
    rng = np.random.default_rng(7)
    labels[rng.random(labels.shape) < 0.002] = 2  # speckle: pieces, voxels outside the body
    body = body_of(image)
    for value, box in enumerate(ndimage.find_objects(labels), 1):
        mask = labels[box] == value
        got = structure_features(image, mask, box, body)
        want = _voxel_list_features(image, mask, box, body)
        voxel_ml = abs(np.linalg.det(image.direction)) * np.prod(SPACING) / 1000
        assert got["volume_ml"] == pytest.approx(want["volume_ml"] * voxel_ml, rel=1e-12)
        assert got["s_range_mm"] == pytest.approx(want["s_range_mm"], abs=1e-9)
        assert got["inside_body"] == pytest.approx(want["inside_body"], abs=1e-12)
        assert (got["inside_body"] < 1) == (value == 2)  # some speckle lies outside the body
        assert got["centre_lps_mm"] == pytest.approx(list(want["centre_lps_mm"]), abs=1e-9)
        outline = body.box_over(want["slices"])
        centre = np.asarray(want["centre_lps_mm"][:2])
        relative = (centre - (outline[0] + outline[1]) / 2) / ((outline[1] - outline[0]) / 2)
        assert [got["body_lr"], got["body_ap"]] == pytest.approx(list(relative), abs=1e-9)
