"""Shared crop/paste boxes and reorientation: the geometry both families build on."""

import numpy as np
import pytest

from CervixAutoSegLib.cropping import bounding_box, extract_box, paste_box
from CervixAutoSegLib.orientation import Reorientation


@pytest.mark.parametrize("start", [(-3, 2, 5), (0, 0, 0), (4, -6, 9), (7, 7, 7)])
def test_paste_box_undoes_extract_box_inside_the_array(start):
    rng = np.random.default_rng(0)
    array = rng.integers(1, 9, size=(9, 10, 12)).astype(np.int16)
    box = extract_box(array, start, (6, 8, 5), fill=-1)
    assert box.shape == (6, 8, 5)
    back = paste_box(box, start, array.shape, fill=0)
    covered = paste_box(np.ones((6, 8, 5), bool), start, array.shape, fill=False)
    np.testing.assert_array_equal(back[covered], array[covered])
    assert not back[~covered].any()
    # Everything of the box that lies outside the array is the fill value.
    assert (box == -1).sum() == box.size - covered.sum()


def test_leading_axes_are_taken_whole():
    stack = np.arange(2 * 5 * 6).reshape(2, 5, 6)
    crops = extract_box(stack, (1, 2), (3, 3))
    np.testing.assert_array_equal(crops, stack[:, 1:4, 2:5])


def test_bounding_box_with_margin_is_clipped_to_the_array():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:4, 5:9, 0] = True
    assert bounding_box(mask) == ((2, 5, 0), (2, 4, 1))
    assert bounding_box(mask, margin=(1, 2, 3)) == ((1, 3, 0), (4, 7, 4))
    assert bounding_box(np.zeros((3, 3), bool)) is None


def test_reorientation_round_trip_and_spacing_of_a_feet_first_prone_sagittal_grid():
    # Index axes: i towards the feet, j towards the patient's left, k towards anterior.
    direction = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    turn = Reorientation.to_lps(direction, np.array([0.5, 0.7, 3.0]))
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    oriented = turn.apply(array)
    # LPS x (left) is index j (0.7 mm), y (posterior) index k (3 mm), z (superior) index i (0.5 mm).
    assert turn.spacing == (0.7, 3.0, 0.5)
    assert oriented.shape == (6, 4, 5)
    np.testing.assert_array_equal(turn.undo(oriented), array)


@pytest.mark.parametrize("seed", range(4))
def test_mean_index_from_counts_is_the_mean_of_the_voxel_indices(seed):
    from CervixAutoSegLib.cropping import mean_index, voxel_counts

    rng = np.random.default_rng(seed)
    mask = rng.random((9, 31, 17)) < [0.0005, 0.05, 0.5, 0.95][seed]
    start = (3, 100, 250)
    counts = voxel_counts(mask)
    assert [c.shape for c in counts] == [(9,), (31,), (17,)] and counts[0].sum() == np.count_nonzero(mask)
    indices = np.nonzero(mask)
    want = [np.mean(axis + first) for axis, first in zip(indices, start)]
    np.testing.assert_allclose(mean_index(counts, start), want, rtol=0, atol=1e-9)
    assert mean_index(voxel_counts(np.zeros((2, 3, 4), bool))) is None


def test_label_boxes_are_scipys_find_objects_computed_on_the_non_zero_box():
    from scipy import ndimage

    from CervixAutoSegLib.cropping import label_boxes, nonzero_box

    rng = np.random.default_rng(7)
    cases = [np.zeros((4, 5, 6), np.uint8), np.ones((3, 4, 5), bool)]
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        labels = np.zeros(shape, np.uint8)
        for value in rng.choice(np.arange(1, 6), size=int(rng.integers(1, 4)), replace=False):
            corner = [int(rng.integers(0, n)) for n in shape]  # boxes touching any face, single voxels included
            extent = [int(rng.integers(1, n - c + 1)) for n, c in zip(shape, corner)]
            labels[tuple(slice(c, c + e) for c, e in zip(corner, extent))] = value
        cases.append(labels)
    negative = np.zeros((5, 6, 7), np.int16)
    negative[0, 0, 0], negative[4, 5, 6], negative[2, 3, 3] = -3, -1, 2  # find_objects ignores values below 1
    cases.append(negative)
    for labels in cases:
        assert label_boxes(labels) == ndimage.find_objects(labels.astype(np.int32)), labels.shape
    assert nonzero_box(np.zeros((3, 3, 3))) is None
    spot = np.zeros((6, 7, 8), np.uint8)
    spot[5, 0, 3] = spot[2, 4, 7] = 1
    assert nonzero_box(spot) == (slice(2, 6), slice(0, 5), slice(3, 8))
