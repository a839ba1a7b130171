"""Per-slice QA signals and flag scores (CervixAutoSegLib.qa.slice_signals / slice_flags / corrupt) on
synthetic label maps whose right answer is known slice by slice."""

from __future__ import annotations

import numpy as np
import pytest

from CervixAutoSegLib.qa.config import DEFAULT_THRESHOLDS, QAConfig
from CervixAutoSegLib.qa.corrupt import KINDS, changed_pairs, corrupt, flag_rates
from CervixAutoSegLib.qa.maps import UNIT, EvidenceMaps, maps_for, nearest_in_plane
from CervixAutoSegLib.qa.slice_flags import FLAG_SCORE, assess_slices, review_order, signal_score
from CervixAutoSegLib.qa.slice_signals import robust_deviation, structure_slices
from CervixAutoSegLib.structures import ANATOMICAL_STRUCTURE, CTV, GTV, ORGAN, UTERUS, Structure
from CervixAutoSegLib.volume import Volume

SPACING = (1.0, 1.0, 3.0)
SHAPE = (30, 80, 96)
A = Structure(1, "Alpha", "alpha", (200, 80, 80), ORGAN, ANATOMICAL_STRUCTURE, UTERUS)
B = Structure(2, "Beta", "beta", (80, 200, 80), CTV, ANATOMICAL_STRUCTURE, UTERUS)
STRUCTURES = (A, B)


def ellipsoid(shape=SHAPE, centre=(15.0, 40.0, 36.0), radii=(10.5, 18.0, 14.0), drift_per_slice=0.0) -> np.ndarray:
    """bool (z, y, x): an ellipsoid in slice units (z) and pixels (y, x), optionally drifting in x."""
    z, y, x = np.indices(shape, dtype=float)
    x = x - drift_per_slice * (z - centre[0])
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 <= 1


def two_structures(direction=np.eye(3)) -> Volume:
    labels = np.zeros(SHAPE, np.uint8)
    labels[ellipsoid(drift_per_slice=0.4)] = 1
    labels[ellipsoid(centre=(15.0, 40.0, 72.0), radii=(8.0, 12.0, 10.0))] = 2
    return Volume(labels, SPACING, (0.0, 0.0, 0.0), direction)


def signals_of(volume: Volume, structure=A, **kwargs):
    labels = np.asarray(volume.array)
    return structure_slices(labels, structure.name, structure.value, (structure.value,), SPACING[:2], **kwargs)


def at(found, signal, k):
    return float(found.signals[signal][list(found.slices).index(k)])


def test_a_smooth_structure_is_consistent_slice_to_slice():
    found = signals_of(two_structures())
    assert found.slices[0] == 5 and found.slices[-1] == 25  # the extent: slices where it appears
    inner = slice(3, -3)  # the tips change fast, as real organs do; the body does not
    assert np.nanmax(found.signals["centroid_jump_mm"][inner]) < 1.0
    assert np.nanmax(found.signals["overlap_loss"][inner]) < 0.15
    assert np.nanmax(found.signals["orphan_area_mm2"]) == 0 and not found.signals["gap"].any()
    assert not found.signals["pieces_change"].any() and not found.signals["volume_end"].any()
    assert np.isnan(found.signals["uncertainty_inside"]).all()  # no evidence given: label signals only


def test_a_shifted_slice_jumps_and_its_neighbours_do_not():
    volume = two_structures()
    labels = np.array(volume.array)
    k = 14
    moved = np.roll(labels[k] == 1, 10, axis=1)  # 10 px = 10 mm to the patient's left
    labels[k][labels[k] == 1] = 0
    labels[k][moved & (labels[k] == 0)] = 1
    found = signals_of(volume.with_array(labels))
    assert at(found, "centroid_jump_mm", k) == pytest.approx(10.0, abs=1.0)
    assert at(found, "centroid_jump_mm", k - 1) < 1.0 and at(found, "centroid_jump_mm", k + 1) < 1.0


def test_erase_island_extend_and_swap_each_raise_their_own_signal():
    labels = np.asarray(two_structures().array)
    rng = np.random.default_rng(0)
    seen = {}
    for kind in ("erase", "island", "extend", "swap"):
        corrupted, corruption = corrupt(labels, STRUCTURES, kind, A, rng, SPACING[:2])
        found = signals_of(two_structures().with_array(corrupted))
        seen[kind] = {name: at(found, name, corruption.slice) for name in ("gap", "orphan_area_mm2", "end_area_ratio",
                                                                           "overlap_loss")}
        assert ("Alpha", corruption.slice) in corruption.changed
    assert seen["erase"]["gap"] == 1.0
    assert seen["island"]["orphan_area_mm2"] == pytest.approx(np.pi * 6.0 ** 2, rel=0.15)
    assert seen["extend"]["end_area_ratio"] == pytest.approx(1.0, abs=0.02)  # a copy of the end slice: no taper
    assert seen["swap"]["overlap_loss"] > 0.9  # Alpha's slice now lies where Beta was


def test_corrupted_pairs_are_the_structure_slices_whose_region_changed():
    labels = np.asarray(two_structures().array)
    corrupted, corruption = corrupt(labels, STRUCTURES, "swap", A, np.random.default_rng(1), SPACING[:2])
    assert corruption.changed == {("Alpha", corruption.slice), ("Beta", corruption.slice)}
    assert changed_pairs(labels, labels, STRUCTURES) == set()


def test_every_kind_of_corruption_is_flagged_on_synthetic_structures():
    rates = flag_rates(two_structures(), STRUCTURES, QAConfig(), np.random.default_rng(3))
    assert set(rates.by_kind) == set(KINDS)
    assert rates.recall >= 0.9, rates.missed
    assert rates.false_alarm_rate <= 0.1


def test_the_closest_of_three_predictions_keeps_an_outlier_to_itself():
    values = np.array([0.0, 1.0, 2.0, 13.0, 4.0, 5.0, 6.0])  # a straight line with one outlier at index 3
    deviation = robust_deviation(values)
    assert deviation[3] == pytest.approx(10.0)
    assert np.all(np.delete(deviation, 3) <= 1e-9)


def test_a_piece_that_continues_on_no_neighbouring_slice_is_an_orphan_and_changes_the_piece_count():
    labels = np.array(two_structures().array)
    labels[15, 70:75, 5:10] = 1  # 25 mm², far from Alpha
    found = signals_of(two_structures().with_array(labels))
    assert at(found, "orphan_area_mm2", 15) == 25.0 and at(found, "pieces_change", 15) == 1.0
    assert at(found, "pieces_change", 14) == 0.0 and at(found, "pieces_change", 16) == 0.0


def test_structure_reaching_the_first_image_slice_is_marked_there():
    labels = np.zeros(SHAPE, np.uint8)
    labels[:6, 30:50, 30:50] = 1
    found = signals_of(two_structures().with_array(labels))
    assert at(found, "volume_end", 0) == 1.0 and found.signals["volume_end"][1:].sum() == 0


def test_tumour_touching_the_border_of_its_organ():
    organ = Structure(1, "Organ", "organ", (200, 80, 80), ORGAN, ANATOMICAL_STRUCTURE, UTERUS)
    tumour = Structure(2, "Tumour", "tumour", (80, 80, 200), GTV, ANATOMICAL_STRUCTURE, UTERUS)
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[:, 5:35, 5:35] = 1
    labels[1:3, 15:25, 15:25] = 2  # well inside
    labels[3:5, 5:20, 5:35] = 2  # fills the organ's upper half: its outline runs along the organ's border
    found = structure_slices(labels, "Tumour", 2, (2,), (1.0, 1.0), container=(1, 2))
    assert at(found, "border_contact", 1) == 0.0 and at(found, "border_contact", 3) > 0.6
    _, scored = assess_slices(Volume(labels, (1.0, 1.0, 3.0), (0, 0, 0), np.eye(3)), (organ, tumour), QAConfig())
    organ_slices = [e.slice for e in scored if e.structure == "Organ"]
    assert organ_slices == list(range(6))  # the organ's region includes the tumour painted over it


def test_evidence_signals_read_uncertainty_inside_and_along_the_contour_and_disagreement_only_where_mirrored():
    volume = two_structures()
    labels = np.asarray(volume.array)
    uncertainty = np.zeros(SHAPE, np.uint8)
    uncertainty[12][labels[12] == 1] = UNIT  # unsure inside Alpha on slice 12 only
    disagreement = np.zeros(SHAPE, np.uint8)
    disagreement[14][labels[14] == 1] = UNIT
    mirrored = np.zeros(SHAPE, bool)
    mirrored[13:15] = True  # the mirrored pass ran on slices 13 and 14 only
    maps = EvidenceMaps(uncertainty, disagreement, mirrored)
    found = signals_of(volume, evidence=maps)
    assert at(found, "uncertainty_inside", 12) == 1.0 and at(found, "uncertainty_inside", 13) == 0.0
    assert 0.3 < at(found, "uncertainty_contour", 12) < 0.7  # half of the band is inside
    assert at(found, "flip_disagreement", 14) == pytest.approx(1.0) and at(found, "flip_disagreement", 13) == 0.0
    assert np.isnan(at(found, "flip_disagreement", 12))  # never mirrored there: undefined, not "agreed"
    assert maps_for([maps], 1) is maps and maps_for([EvidenceMaps(uncertainty, values=(2,))], 1) is None


def test_the_score_is_one_half_at_the_threshold_and_the_reasons_name_the_signal():
    assert signal_score(5.0, 5.0) == FLAG_SCORE and signal_score(0.0, 5.0) == 0.0
    assert signal_score(20.0, 5.0) > signal_score(10.0, 5.0) > FLAG_SCORE
    labels = np.array(two_structures().array)
    labels[14][labels[14] == 1] = 0  # a gap in Alpha
    _, scored = assess_slices(two_structures().with_array(labels), STRUCTURES, QAConfig())
    gap = next(e for e in scored if (e.structure, e.slice) == ("Alpha", 14))
    assert gap.flagged and "missing on this slice" in gap.reasons[0] and gap.signals["gap"] == 1.0
    order = review_order([e.to_json() for e in scored])
    assert order[0] == ("Alpha", 14) or next(e for e in scored if (e.structure, e.slice) == order[0]).score >= gap.score


def test_card_thresholds_override_the_defaults_per_structure():
    config = QAConfig.from_json({"slice_flags": {"thresholds": {"*": {"centroid_jump_mm": 3.0},
                                                                "Alpha": {"centroid_jump_mm": 8.0}}}})
    assert config.threshold("Alpha", "centroid_jump_mm") == 8.0 and config.threshold("Beta", "centroid_jump_mm") == 3.0
    assert config.threshold("Beta", "overlap_loss") == DEFAULT_THRESHOLDS["overlap_loss"]
    assert config.threshold("Beta", "gap") == 0.5 and not config.calibrated


@pytest.mark.parametrize("flipped", [False, True])
def test_slice_indices_are_input_array_axis_0_and_positions_lie_on_that_slice(flipped):
    direction = np.diag([1.0, 1.0, -1.0]) if flipped else np.eye(3)  # feet-first: slice k runs towards the feet
    volume = two_structures(direction)
    labels = np.array(volume.array)
    labels[14][labels[14] == 1] = 0
    _, scored = assess_slices(volume.with_array(labels), STRUCTURES, QAConfig())
    gap = next(e for e in scored if (e.structure, e.slice) == ("Alpha", 14))
    point = np.array(gap.position_lps_mm)
    assert volume.physical_to_index(point)[2] == pytest.approx(14.0)
    assert gap.z_mm == pytest.approx(float(point @ volume.slice_normal), abs=0.01)


def test_nearest_in_plane_maps_pixel_extents_onto_each_other():
    maps = np.arange(4, dtype=np.uint8).reshape(1, 2, 2)
    out = nearest_in_plane(maps, (4, 4))
    assert out.shape == (1, 4, 4) and out[0, 0, 0] == 0 and out[0, 3, 3] == 3 and out[0, 1, 2] == 1
