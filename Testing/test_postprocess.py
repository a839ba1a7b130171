"""Postprocessing rules on hand-made label maps (z, y, x)."""

from __future__ import annotations

import numpy as np
import pytest

from CervixAutoSegLib.postprocess import (
    KEEP_ABOVE_VOLUME,
    NODAL_MIN_COMPONENT_ML,
    StructureRule,
    postprocess_labels,
    rules_for,
    voxel_volume_ml,
)
from CervixAutoSegLib.ct.family import CT_STRUCTURES
from CervixAutoSegLib.mr.family import MR_STRUCTURES

BLADDER, RECTUM, CTVN, CTVP = 1, 2, 3, 4
ORGAN, TUMOUR = 1, 2
SPACING = (1.0, 1.0, 2.0)  # mm (x, y, z): 2 µl voxels, 500 voxels per ml


def box(labels: np.ndarray, value: int, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> None:
    labels[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = value


def test_ct_rules_follow_the_structure_table():
    rules = {rule.value: rule for rule in rules_for(CT_STRUCTURES)}
    assert rules[CTVN].components == KEEP_ABOVE_VOLUME and rules[CTVN].min_component_ml == NODAL_MIN_COMPONENT_ML
    assert all(rules[v].components == "largest" for v in (BLADDER, RECTUM, CTVP))
    assert all(rule.fill_holes and rule.within is None for rule in rules.values())


def test_mr_rules_put_the_tumour_inside_the_organ():
    rules = {rule.value: rule for rule in rules_for(MR_STRUCTURES)}
    assert rules[TUMOUR].within == ORGAN
    assert rules[ORGAN].includes == (TUMOUR,)


def test_largest_component_kept_for_organs_and_other_labels_untouched():
    labels = np.zeros((10, 40, 40), np.uint8)
    box(labels, BLADDER, (2, 8), (5, 20), (5, 20))       # 6*15*15 = 1350 voxels
    box(labels, BLADDER, (2, 4), (30, 33), (30, 33))     # stray island, 18 voxels
    box(labels, RECTUM, (0, 10), (25, 29), (5, 9))
    cleaned, summary = postprocess_labels(labels, rules_for(CT_STRUCTURES), SPACING)
    assert np.count_nonzero(cleaned == BLADDER) == 1350
    assert cleaned[3, 31, 31] == 0
    np.testing.assert_array_equal(cleaned == RECTUM, labels == RECTUM)
    assert summary[BLADDER].components_found == 2 and summary[BLADDER].components_kept == 1
    assert summary[BLADDER].removed_ml == pytest.approx(18 * voxel_volume_ml(SPACING))


def test_a_structure_cut_in_two_keeps_both_big_parts_but_not_its_islands():
    # CTV-UV whose corpus the network cut off the cervix: both parts are the structure.
    labels = np.zeros((20, 40, 40), np.uint8)
    box(labels, CTVP, (0, 10), (5, 20), (5, 20))       # cervix part: 2250 voxels
    box(labels, CTVP, (12, 20), (5, 15), (5, 15))      # corpus part: 800 voxels (36 %)
    box(labels, CTVP, (12, 14), (30, 34), (30, 34))    # island: 32 voxels (1.4 %)
    cleaned, summary = postprocess_labels(labels, rules_for(CT_STRUCTURES), SPACING)
    assert np.count_nonzero(cleaned == CTVP) == 2250 + 800
    assert not cleaned[12:14, 30:34, 30:34].any()
    assert summary[CTVP].components_found == 3 and summary[CTVP].components_kept == 2
    box(labels, CTVP, (12, 20), (5, 15), (5, 15))
    labels[12:20, 5:15, 8:15] = 0                      # corpus part shrunk to 240 voxels (11 %)
    cleaned, _ = postprocess_labels(labels, rules_for(CT_STRUCTURES), SPACING)
    assert np.count_nonzero(cleaned == CTVP) == 2250


def test_nodal_ctv_keeps_both_sides_and_drops_small_islands():
    labels = np.zeros((20, 60, 80), np.uint8)
    box(labels, CTVN, (0, 20), (20, 35), (5, 20))     # right side: 4500 voxels = 9 ml
    box(labels, CTVN, (0, 20), (20, 35), (60, 75))    # left side, separate component
    box(labels, CTVN, (5, 7), (50, 55), (40, 45))     # 50 voxels = 0.1 ml island
    cleaned, summary = postprocess_labels(labels, rules_for(CT_STRUCTURES), SPACING)
    kept = cleaned == CTVN
    assert kept[:, 20:35, 5:20].all() and kept[:, 20:35, 60:75].all()
    assert not kept[5:7, 50:55, 40:45].any()
    assert summary[CTVN].components_found == 3 and summary[CTVN].components_kept == 2


def test_nodal_threshold_is_in_ml_so_it_follows_the_voxel_size():
    labels = np.zeros((4, 30, 30), np.uint8)
    box(labels, CTVN, (0, 4), (0, 10), (0, 10))        # 400 voxels
    box(labels, CTVN, (0, 4), (20, 30), (20, 30))      # 400 voxels
    rule = (StructureRule(CTVN, KEEP_ABOVE_VOLUME, min_component_ml=1.0),)
    small_voxels, _ = postprocess_labels(labels, rule, (1.0, 1.0, 2.0))   # 0.8 ml each
    large_voxels, _ = postprocess_labels(labels, rule, (1.0, 1.0, 3.0))   # 1.2 ml each
    assert not small_voxels.any()
    assert np.count_nonzero(large_voxels == CTVN) == 800


def test_holes_filled_slice_by_slice_but_never_over_another_structure():
    labels = np.zeros((5, 30, 30), np.uint8)
    box(labels, CTVP, (0, 5), (5, 25), (5, 25))
    labels[:, 10:13, 10:13] = 0        # hole: background, to be filled
    labels[:, 15:18, 15:18] = RECTUM   # enclosed other structure: must stay
    cleaned, summary = postprocess_labels(labels, rules_for(CT_STRUCTURES), SPACING)
    assert (cleaned[:, 10:13, 10:13] == CTVP).all()
    assert (cleaned[:, 15:18, 15:18] == RECTUM).all()
    assert summary[CTVP].filled_ml == pytest.approx(5 * 9 * voxel_volume_ml(SPACING))


def test_a_hole_open_along_z_is_still_filled_in_each_slice():
    # A tube (hole through all slices) is not a 3D hole; per-slice filling closes it.
    labels = np.zeros((6, 20, 20), np.uint8)
    box(labels, BLADDER, (0, 6), (4, 16), (4, 16))
    labels[:, 8:12, 8:12] = 0
    cleaned, _ = postprocess_labels(labels, rules_for(CT_STRUCTURES), SPACING)
    assert (cleaned[:, 4:16, 4:16] == BLADDER).all()


def test_mr_tumour_kept_only_inside_the_organ_and_painted_over_it():
    labels = np.zeros((8, 40, 40), np.uint8)
    box(labels, ORGAN, (1, 7), (5, 30), (5, 30))
    box(labels, TUMOUR, (3, 5), (12, 18), (12, 18))     # inside the organ
    box(labels, TUMOUR, (2, 4), (34, 38), (34, 38))     # outside: no organ there
    box(labels, ORGAN, (0, 2), (36, 39), (0, 3))        # stray organ island
    cleaned, summary = postprocess_labels(labels, rules_for(MR_STRUCTURES), SPACING)
    assert (cleaned[3:5, 12:18, 12:18] == TUMOUR).all()
    assert not (cleaned[2:4, 34:38, 34:38] == TUMOUR).any()
    assert not cleaned[0:2, 36:39, 0:3].any()
    assert np.count_nonzero(cleaned == ORGAN) == 6 * 25 * 25 - 2 * 6 * 6
    assert summary[ORGAN].components_kept == 1


def test_tumour_voxels_count_as_organ_so_a_lone_tumour_is_its_own_organ():
    # The organ region covers the tumour label (tumour painted over organ), so a tumour the
    # network drew without surrounding organ still lies "within" the organ and is kept.
    labels = np.zeros((4, 20, 20), np.uint8)
    box(labels, TUMOUR, (0, 4), (5, 10), (5, 10))
    cleaned, summary = postprocess_labels(labels, rules_for(MR_STRUCTURES), SPACING)
    np.testing.assert_array_equal(cleaned, labels)
    assert summary[ORGAN].components_kept == 1


def test_tumour_is_dropped_when_its_container_is_empty():
    labels = np.zeros((4, 20, 20), np.uint8)
    box(labels, TUMOUR, (0, 4), (5, 10), (5, 10))
    rules = (StructureRule(ORGAN), StructureRule(TUMOUR, within=ORGAN))  # organ does not cover the tumour
    cleaned, _ = postprocess_labels(labels, rules, SPACING)
    assert not cleaned.any()


def test_empty_and_unknown_labels():
    empty, summary = postprocess_labels(np.zeros((3, 5, 5), np.uint8), rules_for(CT_STRUCTURES), SPACING)
    assert not empty.any() and summary[BLADDER].components_found == 0
    labels = np.full((3, 5, 5), 7, np.uint8)  # no rule for 7: kept as it is
    np.testing.assert_array_equal(postprocess_labels(labels, rules_for(CT_STRUCTURES), SPACING)[0], labels)


def test_structure_touching_the_volume_border():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, :, :] = RECTUM
    labels[0, 0, 0] = 0
    cleaned, _ = postprocess_labels(labels, rules_for(CT_STRUCTURES), SPACING)
    assert np.count_nonzero(cleaned == RECTUM) == labels.size - 1


def test_voxel_volume_of_a_sheared_grid():
    sheared = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 0.98]])
    assert voxel_volume_ml((1.0, 1.0, 2.0), sheared) == pytest.approx(2.0 * 0.98 / 1000)


@pytest.mark.parametrize("seed", range(6))
def test_hole_filling_equals_filling_each_slice_on_its_own(seed):
    """Random blobs with holes, holes open to the box edge, diagonal-only leaks and empty slices."""
    from scipy import ndimage

    from CervixAutoSegLib.postprocess import fill_holes_per_slice

    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((5, 23 + seed, 31)) < 0.55)
    mask[:, 8:12, 5] = True
    mask[2] = False                                   # an empty slice
    mask[3, 4:9, 10:15] = True
    mask[3, 6, 12] = False                            # a one-pixel hole
    mask[3, 0, 20:25] = mask[3, 1:4, 20] = mask[3, 1:4, 24] = True
    mask[3, 1:4, 21:24] = False                       # open to the edge of the box: not a hole
    mask[4, 10:13, 10:13] = True
    mask[4, 11, 11] = False
    mask[4, 10, 10] = False                           # hole leaks only diagonally: still a hole (4-connected)
    expected = np.stack([ndimage.binary_fill_holes(plane) for plane in mask])
    np.testing.assert_array_equal(fill_holes_per_slice(mask), expected)
    assert expected[3, 6, 12] and not expected[3, 2, 22] and expected[4, 11, 11]


@pytest.mark.parametrize("structures", [CT_STRUCTURES, MR_STRUCTURES], ids=["ct", "mr"])
@pytest.mark.parametrize("seed", range(3))
def test_cleaning_in_place_gives_the_map_a_copy_gets(structures, seed):
    """Speckled blobs of every label value, an unnamed value (9) and a tumour partly outside its
    organ: in place, the same labels and summary as on a copy, in the very array given."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((12, 48, 40), np.uint8)
    for value in (1, 2, 3, 4, 9):
        z, y, x = rng.integers(0, 8), rng.integers(0, 36), rng.integers(0, 28)
        box(labels, value, (z, z + 4), (y, y + 10), (x, x + 10))
    labels[rng.random(labels.shape) < 0.01] = 1 + seed % 2  # islands of a structure both families know
    rules = rules_for(structures)
    want, want_summary = postprocess_labels(labels.copy(), rules, SPACING)
    given = labels.copy()
    got, summary = postprocess_labels(given, rules, SPACING, in_place=True)
    assert got is given and np.array_equal(got, want)
    assert summary == want_summary
    assert not np.array_equal(want, labels)  # the cleaning changed something


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("mode", "min_voxels"), [("largest", 0.0), ("min_volume", 6.0), ("min_volume", 0.0),
                                                  ("min_volume", 1e9)])
def test_selected_components_are_the_kept_labels_of_the_labelling(seed, mode, min_voxels):
    """Whichever way the pieces are selected (comparisons for a few, a gather for many, the mask
    itself when all stay), the result is the mask of the labelled pieces that pass, and counts agree."""
    from scipy import ndimage

    from CervixAutoSegLib.postprocess import select_components

    rng = np.random.default_rng(seed)
    mask = rng.random((6, 30, 40)) < (0.02, 0.05, 0.3, 0.6, 0.002, 0.9)[seed]
    if seed == 4:
        mask[:] = False
        mask[2:4, 5:9, 5:9] = True  # a single piece
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    keep = sizes >= (0.2 * sizes.max() if mode == "largest" else min_voxels)
    keep[0] = False
    kept, found, kept_count = select_components(mask, mode, min_voxels)
    assert found == count and kept_count == int(keep.sum())
    assert kept.dtype == bool and kept.shape == mask.shape
    np.testing.assert_array_equal(kept, keep[components])


def test_pieces_are_labelled_compactly_and_exactly_as_scipy_does():
    """uint16 labels while the pieces fit (half the fresh memory), the same labels and count as
    scipy's int32 ones; past 65535 pieces int32, still exact."""
    from scipy import ndimage

    from CervixAutoSegLib.postprocess import IN_PLANE, label_pieces

    rng = np.random.default_rng(5)
    few = ndimage.gaussian_filter(rng.standard_normal((8, 40, 50)), 1.5) > 0.3
    many = np.zeros((3, 600, 600), dtype=bool)
    many[:, ::2, ::2] = True  # 270,000 single-voxel pieces
    for mask, structure, dtype in ((few, None, np.uint16), (few, IN_PLANE, np.uint16),
                                   (few, np.ones((3, 3, 3), bool), np.uint16), (many, None, np.int32)):
        labels, count = label_pieces(mask, structure)
        want, want_count = ndimage.label(mask, structure=structure)
        assert labels.dtype == dtype and count == want_count
        np.testing.assert_array_equal(labels, want)


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.7])
def test_largest_piece_is_the_biggest_face_connected_piece(density):
    from scipy import ndimage

    from CervixAutoSegLib.postprocess import largest_piece

    mask = np.random.default_rng(3).random((6, 30, 40)) < density
    labels, count = ndimage.label(mask)
    got = largest_piece(mask)
    if count <= 1:
        assert got is mask  # nothing to cut: no copy
    else:
        sizes = np.bincount(labels.ravel())[1:]
        np.testing.assert_array_equal(got, labels == 1 + int(np.argmax(sizes)))
