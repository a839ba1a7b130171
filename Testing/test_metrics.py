"""Metrics against independent implementations (medpy, DeepMind surface-distance) and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.metrics import (
    Status,
    added_path_length,
    compare_masks,
    compare_volumes,
    dice,
    surfel_area_table,
)
from CervixAutoSegLib.volume import Volume

medpy_binary = pytest.importorskip("medpy.metric.binary")
surface_distance = pytest.importorskip("surface_distance")

ANISOTROPIC_ZYX = (3.0, 0.9, 0.9)


def smooth_blob(rng: np.random.Generator, shape: tuple[int, int, int], fraction: float,
                sigma_zyx: tuple[float, float, float] = (1.0, 4.0, 4.0)) -> np.ndarray:
    """A few smooth connected blobs (thresholded smoothed noise), (z, y, x) bool."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_zyx)
    return ndimage.binary_opening(field > np.quantile(field, 1.0 - fraction))


def blob_pair(seed: int, shape=(24, 64, 56)) -> tuple[np.ndarray, np.ndarray]:
    """Truth blob and a prediction that overlaps it imperfectly (realistic mismatch)."""
    rng = np.random.default_rng(seed)
    truth = smooth_blob(rng, shape, 0.12)
    pred = ndimage.binary_dilation(truth, iterations=int(rng.integers(0, 3))) ^ (
        smooth_blob(rng, shape, 0.04) & truth
    )
    pred = np.roll(pred, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
    return truth, pred


# ---------------------------------------------------------------- oracles
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spacing", [ANISOTROPIC_ZYX, (2.5, 0.7, 1.1)])
def test_matches_medpy_and_surface_distance_on_blobs(seed, spacing):
    truth, pred = blob_pair(seed)
    assert truth.any() and pred.any()
    result = compare_masks(truth, pred, spacing_zyx=spacing)
    assert result.status == Status.BOTH_PRESENT
    assert result.dsc == medpy_binary.dc(pred, truth)
    assert result.hd95_pooled_mm == pytest.approx(medpy_binary.hd95(pred, truth, voxelspacing=spacing), abs=1e-6)
    assert result.hd_max_mm == pytest.approx(medpy_binary.hd(pred, truth, voxelspacing=spacing), abs=1e-6)
    assert result.msd_mm == pytest.approx(medpy_binary.assd(pred, truth, voxelspacing=spacing), abs=1e-6)

    oracle = surface_distance.compute_surface_distances(truth, pred, spacing)
    assert result.hd95_directed_max_mm == pytest.approx(
        surface_distance.compute_robust_hausdorff(oracle, 95), abs=0.05)
    assert result.surface_dsc == pytest.approx(
        surface_distance.compute_surface_dice_at_tolerance(oracle, 2.0), abs=0.01)


def test_structures_touching_the_image_border_match_medpy():
    """medpy treats outside the image as background; the crop must not change that."""
    truth, pred = blob_pair(11, shape=(12, 40, 40))
    truth[:, :, :3] = True
    pred[0] = True
    result = compare_masks(truth, pred, spacing_zyx=ANISOTROPIC_ZYX)
    assert result.hd95_pooled_mm == pytest.approx(medpy_binary.hd95(pred, truth, voxelspacing=ANISOTROPIC_ZYX), abs=1e-6)


def test_pooled_and_directed_definitions_really_differ():
    """A one-sided protrusion weighs differently in the two HD95 definitions: the names matter."""
    truth = np.zeros((20, 60, 60), bool)
    truth[5:15, 10:50, 10:50] = True
    pred = truth.copy()
    pred[5:15, 10:50, 50:56] = True  # over-contoured by 6 mm on one side ...
    pred[7:13, 20:40, 56:60] = True  # ... with a further bump
    result = compare_masks(truth, pred, spacing_zyx=(1.0, 1.0, 1.0))
    oracle = surface_distance.compute_surface_distances(truth, pred, (1.0, 1.0, 1.0))
    assert result.hd95_directed_max_mm == pytest.approx(surface_distance.compute_robust_hausdorff(oracle, 95), abs=0.05)
    assert result.hd95_pooled_mm == pytest.approx(medpy_binary.hd95(pred, truth), abs=1e-6)
    assert result.hd95_directed_max_mm - result.hd95_pooled_mm > 0.5


def test_surfel_area_of_a_flat_face_is_one_pixel_area():
    """Code with the four z=0 corners set: a plane across the cube of area dy*dx."""
    table = surfel_area_table((3.0, 0.9, 1.1))
    lower_face = sum(1 << (2 * b + c) for b in (0, 1) for c in (0, 1))
    assert table[lower_face] == pytest.approx(0.9 * 1.1)
    assert table[0] == 0.0 and table[255] == 0.0


# ------------------------------------------------------------ empty masks
def test_both_empty_is_undefined_not_perfect():
    empty = np.zeros((5, 10, 10), bool)
    result = compare_masks(empty, empty, spacing_zyx=ANISOTROPIC_ZYX)
    assert result.status == Status.BOTH_EMPTY
    assert math.isnan(result.dsc) and math.isnan(result.hd95_pooled_mm) and math.isnan(result.surface_dsc)
    assert result.apl_mm == 0.0
    assert math.isnan(dice(empty, empty))


def test_missed_structure_scores_zero_and_infinite_distance():
    truth = np.zeros((5, 30, 30), bool)
    truth[2, 5:15, 5:15] = True
    result = compare_masks(truth, np.zeros_like(truth), spacing_zyx=(3.0, 1.0, 1.0))
    assert result.status == Status.PRED_EMPTY
    assert result.dsc == 0.0 and result.surface_dsc == 0.0
    assert math.isinf(result.hd95_pooled_mm) and math.isinf(result.hd95_directed_max_mm) and math.isinf(result.msd_mm)
    # The whole truth contour must be drawn: 4 sides of 9 mm plus 4 cut corners of sqrt(0.5) mm.
    assert result.apl_mm == pytest.approx(4 * 9 + 4 * math.sqrt(0.5), abs=1e-6)
    assert result.volume_truth_ml == pytest.approx(100 * 3.0 / 1000)


def test_spurious_structure_scores_zero_and_costs_no_drawing():
    pred = np.zeros((5, 30, 30), bool)
    pred[2, 5:15, 5:15] = True
    result = compare_masks(np.zeros_like(pred), pred, spacing_zyx=(3.0, 1.0, 1.0))
    assert result.status == Status.TRUTH_EMPTY
    assert result.dsc == 0.0 and math.isinf(result.hd_max_mm)
    assert result.apl_mm == 0.0


def test_single_voxel_structures():
    truth = np.zeros((7, 9, 9), bool)
    truth[3, 4, 4] = True
    same = compare_masks(truth, truth.copy(), spacing_zyx=ANISOTROPIC_ZYX)
    assert same.dsc == 1.0 and same.hd95_pooled_mm == 0.0 and same.hd95_directed_max_mm == 0.0
    assert same.surface_dsc == pytest.approx(1.0)
    next_slice = np.roll(truth, 1, axis=0)
    moved = compare_masks(truth, next_slice, spacing_zyx=ANISOTROPIC_ZYX)
    assert moved.dsc == 0.0
    assert moved.hd95_pooled_mm == pytest.approx(3.0) and moved.hd_max_mm == pytest.approx(3.0)
    assert moved.hd95_pooled_mm == pytest.approx(medpy_binary.hd95(next_slice, truth, voxelspacing=ANISOTROPIC_ZYX))
    next_column = np.roll(truth, 1, axis=2)
    assert compare_masks(truth, next_column, spacing_zyx=ANISOTROPIC_ZYX).hd_max_mm == pytest.approx(0.9)


# ------------------------------------------------------------- spacing order
def test_raw_array_api_requires_keyword_spacing():
    mask = np.ones((2, 3, 3), bool)
    with pytest.raises(TypeError):
        compare_masks(mask, mask, (3.0, 1.0, 1.0))  # type: ignore[misc]


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 1.0, 1.0, 1.0), (0.0, 1.0, 1.0), (-3.0, 1.0, 1.0)])
def test_wrong_length_or_sign_of_spacing_is_refused(spacing):
    mask = np.ones((2, 3, 3), bool)
    with pytest.raises(InputError):
        compare_masks(mask, mask, spacing_zyx=spacing)


def test_spacing_in_xyz_order_for_a_ct_layout_is_refused():
    """(x, y, z) spacing of a 0.9 x 0.9 x 3 mm CT passed as (z, y, x): 1.5 m wide image."""
    truth = np.zeros((40, 400, 400), bool)
    truth[10:20, 100:200, 100:200] = True
    with pytest.raises(InputError, match="axis order"):
        compare_masks(truth, truth, spacing_zyx=(0.9, 0.9, 3.0))
    assert compare_masks(truth, truth, spacing_zyx=(3.0, 0.9, 0.9)).dsc == 1.0


def test_volume_with_permuted_spacing_is_refused():
    """A CT Volume built with spacing (3, 0.9, 0.9) for its (x, y, z) axes: 1.2 m wide."""
    labels = np.zeros((40, 400, 400), np.uint8)
    labels[10:20, 100:200, 100:200] = 1
    wrong = Volume(labels, spacing=(3.0, 0.9, 0.9), origin=(0, 0, 0), direction=np.eye(3))
    with pytest.raises(InputError, match="axis order"):
        compare_volumes(wrong, wrong, truth_values=1)
    right = Volume(labels, spacing=(0.9, 0.9, 3.0), origin=(0, 0, 0), direction=np.eye(3))
    assert compare_volumes(right, right, truth_values=1).dsc == 1.0


def test_volume_passed_to_raw_api_is_refused():
    volume = Volume(np.ones((2, 3, 3), np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(InputError, match="compare_volumes"):
        compare_masks(volume, volume, spacing_zyx=(1, 1, 1))  # type: ignore[arg-type]


# ---------------------------------------------------------------- geometry
def _slab_volumes(direction: np.ndarray, shift_slices: int) -> tuple[Volume, Volume]:
    """Truth and prediction label maps: a box, and the box moved by whole slices along k."""
    truth = np.zeros((20, 30, 24), np.uint8)
    truth[5:12, 8:20, 6:18] = 1
    grid = Volume(truth, spacing=(0.8, 1.2, 3.0), origin=(-40.0, 25.0, 110.0), direction=direction)
    return grid, grid.with_array(np.roll(truth, shift_slices, axis=0))


DIRECTIONS = {
    "head_first_supine": np.eye(3),
    "feet_first_supine": np.diag([-1.0, 1.0, -1.0]),
    "head_first_prone": np.diag([-1.0, -1.0, 1.0]),
    "oblique": np.linalg.qr(np.array([[1.0, 0.2, 0.1], [-0.1, 1.0, 0.3], [0.05, -0.2, 1.0]]))[0],
}


@pytest.mark.parametrize("orientation", sorted(DIRECTIONS))
def test_distances_are_physical_mm_in_every_orientation(orientation):
    """A 2-slice (6 mm) move along k is 6 mm however the grid lies in the patient."""
    truth, pred = _slab_volumes(DIRECTIONS[orientation], 2)
    result = compare_volumes(truth, pred, truth_values=1)
    assert result.hd_max_mm == pytest.approx(6.0)
    assert result.dsc == pytest.approx(2 * 5 / 14)
    assert result.volume_truth_ml == pytest.approx(7 * 12 * 12 * 0.8 * 1.2 * 3.0 / 1000)


def test_volume_api_reverses_the_spacing():
    truth, pred = _slab_volumes(np.eye(3), 1)
    from_volume = compare_volumes(truth, pred, truth_values=1)
    by_hand = compare_masks(truth.array == 1, pred.array == 1, spacing_zyx=(3.0, 1.2, 0.8))
    assert from_volume.hd95_pooled_mm == by_hand.hd95_pooled_mm == pytest.approx(3.0)


def test_sheared_grid_and_grid_mismatch_are_refused():
    sheared = np.eye(3)
    sheared[:, 2] = [0.0, np.sin(0.2), np.cos(0.2)]  # gantry tilt: k not perpendicular to rows
    truth, pred = _slab_volumes(sheared, 0)
    with pytest.raises(InputError, match="sheared"):
        compare_volumes(truth, pred, truth_values=1)
    truth, _ = _slab_volumes(np.eye(3), 0)
    moved = Volume(truth.array, truth.spacing, truth.origin + [0.0, 0.0, 1.5], truth.direction)
    with pytest.raises(InputError, match="origin"):
        compare_volumes(truth, moved, truth_values=1)


# -------------------------------------------------------- added path length
def test_added_path_length_of_shifted_squares_by_hand():
    """20x20-pixel square moved 6 pixels in x, 1 mm pixels, 2 mm tolerance.

    Marching-squares contour of the truth: four 19 mm sides and four sqrt(0.5) mm corner
    cuts.  Farther than 2 mm from the moved contour: the left side (19), its two
    corner cuts, the first 5.5 - sqrt(2² - 0.5²) mm of the top and bottom sides, and the
    right side except 1.5 mm at each end (16).
    """
    truth = np.zeros((3, 40, 40), bool)
    truth[1, 5:25, 5:25] = True
    pred = np.roll(truth, 6, axis=2)
    per_slice = added_path_length(truth, pred, spacing_zyx=(3.0, 1.0, 1.0), tolerance_mm=2.0)
    expected = 19 + 2 * math.sqrt(0.5) + 2 * (5.5 - math.sqrt(2.0**2 - 0.5**2)) + 16
    assert per_slice[0] == 0.0 and per_slice[2] == 0.0
    assert per_slice[1] == pytest.approx(expected, abs=0.01)
    assert compare_masks(truth, pred, spacing_zyx=(3.0, 1.0, 1.0)).apl_mm == pytest.approx(expected, abs=0.01)


def test_added_path_length_anisotropic_pixels_and_tolerance():
    dx, dy = 0.8, 1.2
    truth = np.zeros((2, 60, 60), bool)
    truth[0, 5:25, 5:25] = True
    far = np.roll(truth, 30, axis=(1, 2))
    perimeter = 2 * 19 * dx + 2 * 19 * dy + 4 * math.hypot(dx / 2, dy / 2)
    assert added_path_length(truth, far, spacing_zyx=(3.0, dy, dx))[0] == pytest.approx(perimeter, abs=1e-6)
    assert added_path_length(truth, truth, spacing_zyx=(3.0, dy, dx))[0] == 0.0
    # One row down (1.2 mm) is within a 2 mm tolerance: nothing to draw.
    down = np.roll(truth, 1, axis=1)
    assert added_path_length(truth, down, spacing_zyx=(3.0, dy, dx), tolerance_mm=2.0)[0] == 0.0
    # Two rows down (2.4 mm): the top side (19 dx = 15.2 mm) counts; the bottom side lies inside the
    # moved square, 2.4 mm from its bottom, but within 2 mm of its vertical sides for 2 mm at each
    # end (15.2 - 2 x 1.6 = 12 mm); the top corner cuts (sqrt(0.6² + 0.4²) mm) count beyond the point
    # t = 0.30056 where they come within 2 mm of the moved corner (7.8, 4.0) (y, x mm):
    # (1.8 + 0.6 t)² + (0.4 - 0.4 t)² = 4.
    t = (-1.84 + math.sqrt(1.84**2 + 4 * 0.52 * 0.6)) / (2 * 0.52)
    expected = 15.2 + 12.0 + 2 * (1 - t) * math.hypot(0.6, 0.4)
    two_down = np.roll(truth, 2, axis=1)
    assert added_path_length(truth, two_down, spacing_zyx=(3.0, dy, dx), tolerance_mm=2.0)[0] == pytest.approx(
        expected, abs=0.01)
