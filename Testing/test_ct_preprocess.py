"""CT preprocessing: window, body crop and its exact inverse, in every patient orientation.

The phantom is defined in LPS millimetres, so volumes with different array layouts
(head-first / feet-first, supine / prone, permuted axes) hold the same physical object;
the network must then see the same slices, and the labels must come back on each input
grid voxel for voxel.
"""

from __future__ import annotations

import numpy as np
import pytest

from CervixAutoSegLib.ct.preprocess import (CTPreprocessing, preprocess_ct, preprocess_labels,
                                            restore_labels, window_hu)
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.orientation import orientation_to_lps
from CervixAutoSegLib.volume import Volume

SPACING = (0.8, 0.9, 2.5)  # (x, y, z) mm: non-unit, anisotropic
SIZE_IJK = (340, 300, 12)  # non-square matrix


def pelvis_in_lps(points: np.ndarray, centre=(10.0, -20.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels of an elliptical pelvis at LPS ``points`` (..., 3) mm.

    Asymmetric on purpose (bladder anterior-left, rectum posterior), so flips show.
    """
    x, y, z = (points[..., a] - centre[a] for a in range(3))
    hu = np.full(x.shape, -1000, dtype=np.int16)
    labels = np.zeros(x.shape, dtype=np.uint8)
    body = (x / 120.0) ** 2 + (y / 95.0) ** 2 < 1
    hu[body] = 40
    shapes = [
        (1, ((x - 15) / 30.0) ** 2 + ((y + 35) / 22.0) ** 2 < 1, 10),   # bladder: anterior (−y), left (+x)
        (2, (x / 12.0) ** 2 + ((y - 45) / 12.0) ** 2 < 1, 30),          # rectum: posterior
        (3, ((np.abs(x) - 70) / 7.0) ** 2 + (y / 9.0) ** 2 < 1, 60),    # nodes on both sides
        (4, (x / 20.0) ** 2 + ((y - 10) / 18.0) ** 2 < 1, 50),          # CTV-UV
    ]
    for value, mask, value_hu in shapes:
        inside = mask & body & (np.abs(z) < 11.0)
        labels[inside] = value
        hu[inside] = value_hu
    return hu, labels


def make_volume(direction=np.eye(3), spacing=SPACING, size_ijk=SIZE_IJK, origin=(-130.0, -155.0, -14.0)):
    """Sample the phantom on a grid; returns (CT Volume, labels array (z, y, x))."""
    geometry = Volume(np.zeros(size_ijk[::-1], np.int16), spacing, origin, direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size_ijk[::-1]), indexing="ij")
    points = geometry.index_to_physical(np.stack([i, j, k], axis=-1))
    hu, labels = pelvis_in_lps(points)
    return geometry.with_array(hu, modality="CT"), labels


def relayout(volume: Volume, labels: np.ndarray, flip_ijk=(False, False, False), permute_ijk=(0, 1, 2)):
    """The same physical grid with another array layout: flipped and/or permuted index axes."""
    array, lab = volume.array, labels
    origin = volume.origin.copy()
    direction = volume.direction.copy()
    corner = np.zeros(3)
    for axis in range(3):
        if flip_ijk[axis]:
            array = np.flip(array, axis=2 - axis)
            lab = np.flip(lab, axis=2 - axis)
            corner[axis] = volume.size_ijk[axis] - 1
            direction[:, axis] *= -1
    origin = volume.index_to_physical(corner)
    spacing = volume.spacing[list(permute_ijk)]
    direction = direction[:, list(permute_ijk)]
    zyx = [2 - a for a in permute_ijk[::-1]]
    flipped = Volume(np.ascontiguousarray(np.transpose(array, zyx)), spacing, origin, direction, "CT")
    return flipped, np.ascontiguousarray(np.transpose(lab, zyx))


POSITIONS = {
    "HFS": dict(),
    "FFS": dict(flip_ijk=(True, False, True)),   # feet first: L-R and S-I reversed
    "HFP": dict(flip_ijk=(True, True, False)),   # prone: L-R and A-P reversed
    "FFP": dict(flip_ijk=(False, True, True)),
    "permuted": dict(permute_ijk=(1, 0, 2)),      # rows and columns swapped in the file
    "sagittal-like": dict(permute_ijk=(2, 0, 1), flip_ijk=(False, True, False)),
}


def test_window_maps_w300_l50_to_unit_interval():
    np.testing.assert_allclose(window_hu(np.array([-1000, -100, 50, 200, 3000])), [0, 0, 0.5, 1, 1])


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.uint16])
@pytest.mark.parametrize("size_ijk", [SIZE_IJK, (200, 180, 5)], ids=["crop-inside", "crop-past-the-edges"])
def test_batch_is_the_windowed_slices_cropped_with_air_outside_the_image(dtype, size_ijk):
    # The batch is cropped before it is windowed (cheaper); it must equal windowing first.
    volume, _ = make_volume(size_ijk=size_ijk)
    hu = volume.array.astype(np.float64) + (1100 if dtype == np.uint16 else 0)  # unsigned: no negative HU
    batch, context = preprocess_ct(volume.with_array(hu.astype(dtype)))
    windowed = window_hu(hu.astype(np.float32))[list(context.slice_indices)]
    expected = np.zeros((len(context.slice_indices), 256, 256), np.float32)  # AIR_VALUE
    (y0, x0), (ny, nx) = context.crop_start, windowed.shape[1:]
    rows, cols = slice(max(y0, 0), min(y0 + 256, ny)), slice(max(x0, 0), min(x0 + 256, nx))
    expected[:, rows.start - y0:rows.stop - y0, cols.start - x0:cols.stop - x0] = windowed[:, rows, cols]
    assert batch.dtype == np.float32 and batch.shape == (len(context.slice_indices), 1, 256, 256)
    np.testing.assert_array_equal(batch[:, 0], expected)
    if size_ijk != SIZE_IJK:
        assert y0 < 0 or x0 < 0  # the crop did reach past the image


@pytest.mark.parametrize("position", POSITIONS)
def test_every_layout_gives_the_hfs_batch_and_restores_exactly(position):
    reference, reference_labels = make_volume()
    reference_batch, _ = preprocess_ct(reference)
    volume, labels = relayout(reference, reference_labels, **POSITIONS[position])
    if position != "HFS":
        assert volume.shape != reference.shape or not np.array_equal(volume.array, reference.array)
    batch, context = preprocess_ct(volume)
    assert batch.dtype == np.float32 and batch.shape[1:] == (1, 256, 256)
    np.testing.assert_array_equal(batch, reference_batch)
    crops = preprocess_labels(labels, context)
    restored = restore_labels(crops, context)
    assert restored.shape == volume.shape and restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, labels)


def test_network_sees_anterior_up_and_patient_left_on_the_right():
    volume, labels = make_volume()
    volume, labels = relayout(volume, labels, **POSITIONS["HFP"])
    batch, context = preprocess_ct(volume)
    crops = preprocess_labels(labels, context)
    middle = crops[len(crops) // 2]
    bladder_rows, bladder_cols = np.nonzero(middle == 1)
    rectum_rows, _ = np.nonzero(middle == 2)
    assert bladder_rows.mean() < rectum_rows.mean()      # rows run towards posterior
    assert bladder_cols.mean() > 128                      # columns run towards patient left (+x)


def test_crop_is_centred_on_the_body_and_restored_labels_sit_at_the_same_lps_positions():
    volume, labels = make_volume()
    batch, context = preprocess_ct(volume)
    body = batch[:, 0] > 0.2
    rows, cols = np.nonzero(body.any(axis=0))
    assert abs((rows.min() + rows.max()) / 2 - 127.5) <= 1.0
    assert abs((cols.min() + cols.max()) / 2 - 127.5) <= 1.0
    restored = restore_labels(preprocess_labels(labels, context), context)
    k, j, i = np.nonzero(restored == 2)
    centre = volume.index_to_physical(np.stack([i, j, k], axis=1)).mean(axis=0)
    np.testing.assert_allclose(centre[:2], [10.0, 25.0], atol=1.0)  # rectum centre, LPS mm


def test_slices_without_body_are_left_out_and_come_back_as_background():
    volume, labels = make_volume()
    array = volume.array.copy()
    array[:2] = -1000  # two empty slices (outside the patient)
    volume = volume.with_array(array)
    batch, context = preprocess_ct(volume)
    assert batch.shape[0] == volume.shape[0] - 2 and context.slice_indices[0] == 2
    restored = restore_labels(np.full((batch.shape[0], 256, 256), 3, np.uint8), context)
    assert not restored[:2].any() and restored[2:].any()


@pytest.mark.parametrize("empty", [[0, 1], [5], [3, 7, 8]], ids=["at-the-start", "one-inside", "two-gaps"])
def test_crops_come_back_on_the_slices_they_came_from(empty):
    volume, _ = make_volume()
    array = volume.array.copy()
    array[empty] = -1000
    array[empty, 150:155, 170:175] = 40  # a thin bridge keeps the body one piece; too small a slice to segment
    batch, context = preprocess_ct(volume.with_array(array))
    kept = [k for k in range(volume.shape[0]) if k not in empty]
    assert list(context.slice_indices) == kept
    crops = (np.arange(len(kept), dtype=np.uint8) + 1)[:, None, None] * np.ones((1, 256, 256), np.uint8)
    restored = restore_labels(crops, context)
    assert not restored[empty].any()
    for n, k in enumerate(kept):  # each crop on its own slice, and only inside the crop
        assert set(np.unique(restored[k])) == {0, n + 1}


def test_small_pixels_are_resampled_to_training_spacing_and_back():
    volume, labels = make_volume(spacing=(0.5, 0.55, 2.5), size_ijk=(520, 440, 12), origin=(-120, -140, -14))
    params = CTPreprocessing()
    batch, context = preprocess_ct(volume, params)
    assert context.resampled
    np.testing.assert_allclose(context.working_spacing[:2], params.spacing_mm, rtol=0.01)
    restored = restore_labels(preprocess_labels(labels, context), context)
    assert restored.shape == volume.shape
    for value in range(1, 5):
        truth, back = labels == value, restored == value
        assert 2 * (truth & back).sum() / (truth.sum() + back.sum()) > 0.95


def test_spacing_within_range_is_not_resampled():
    _, context = preprocess_ct(make_volume()[0])
    assert not context.resampled and context.working_shape == context.oriented_shape


def test_body_wider_than_the_crop_is_centred_on_its_centre_of_mass():
    # 1 mm pixels, body 360 mm wide with one "arm" far right: bbox centre ≠ centre of mass.
    size = (420, 300, 6)
    geometry = Volume(np.zeros(size[::-1], np.int16), (1.0, 1.0, 3.0), (0, 0, 0), np.eye(3))
    array = np.full(geometry.shape, -1000, np.int16)
    array[:, 60:240, 40:300] = 40       # trunk, columns 40..299
    array[:, 140:160, 300:400] = 40     # thin arm attached on the right, up to column 399
    batch, context = preprocess_ct(geometry.with_array(array))
    trunk_centre_col = (40 + 299) / 2
    crop_centre_col = context.crop_start[1] + 128
    assert abs(crop_centre_col - trunk_centre_col) < 20  # bbox centre would be 219.5
    assert abs(crop_centre_col - (40 + 399) / 2) > 25


def test_gantry_tilt_grid_round_trips_exactly():
    tilt = np.radians(15)
    direction = np.array([[1, 0, 0], [0, 1, np.sin(tilt)], [0, 0, np.cos(tilt)]])
    volume, labels = make_volume(direction=direction)
    batch, context = preprocess_ct(volume)
    np.testing.assert_array_equal(restore_labels(preprocess_labels(labels, context), context), labels)


def test_no_body_is_a_clear_input_error():
    empty = Volume(np.full((4, 64, 64), -1000, np.int16), (1, 1, 3), (0, 0, 0), np.eye(3))
    with pytest.raises(InputError, match="no patient body"):
        preprocess_ct(empty)


def test_wrong_shapes_are_refused():
    volume, labels = make_volume()
    batch, context = preprocess_ct(volume)
    with pytest.raises(InputError):
        preprocess_labels(labels[:-1], context)
    with pytest.raises(ValueError):
        restore_labels(np.zeros((batch.shape[0], 128, 128), np.uint8), context)


@pytest.mark.parametrize("direction,expected_axes,expected_flips", [
    (np.eye(3), (0, 1, 2), (False, False, False)),
    (np.diag([-1.0, -1.0, 1.0]), (0, 1, 2), (False, True, True)),
    (np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]]), (0, 2, 1), (True, False, False)),
])
def test_orientation_to_lps(direction, expected_axes, expected_flips):
    assert orientation_to_lps(direction) == (expected_axes, expected_flips)


def test_body_mask_is_the_largest_component_of_the_whole_volume():
    from scipy import ndimage

    from CervixAutoSegLib.ct.preprocess import body_mask

    hu = np.full((7, 60, 80), -1000, np.int16)
    hu[1:6, 10:40, 20:70] = 40          # body, off centre
    hu[:, 50:54, 5:78] = 200            # couch: on every slice, separate, smaller
    hu[3, 2, 2] = 100                   # one noisy voxel in a corner
    labels, _ = ndimage.label(hu > -500)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    np.testing.assert_array_equal(body_mask(hu), labels == np.argmax(sizes))
    assert body_mask(hu).sum() == 5 * 30 * 50
    only_body = np.where(hu == 40, hu, np.int16(-1000))
    np.testing.assert_array_equal(body_mask(only_body), only_body == 40)
    assert not body_mask(np.full((2, 5, 5), -1000, np.int16)).any()


def _boxed_cases():
    """(name, volume) of every layout, slices with gaps, a crop reaching past the image, resampling."""
    reference, labels = make_volume()
    for position, layout in POSITIONS.items():
        yield position, relayout(reference, labels, **layout)[0]
    gaps = reference.array.copy()
    gaps[[0, 5]] = -1000
    gaps[[0, 5], 150:155, 170:175] = 40
    yield "gaps", reference.with_array(gaps)
    yield "crop-past-edge", make_volume(size_ijk=(200, 180, 12), origin=(-80.0, -100.0, -14.0))[0]
    yield "resampled", make_volume(spacing=(0.5, 0.55, 2.5), size_ijk=(520, 440, 12), origin=(-120, -140, -14))[0]


@pytest.mark.parametrize("name, volume", list(_boxed_cases()), ids=[name for name, _ in _boxed_cases()])
def test_maps_restored_on_their_footprint_read_like_the_whole_grid(name, volume):
    """The network's maps come back as BoxedMaps: whole, and box by box, they equal the map
    restored onto the whole input grid; outside their footprint there is nothing."""
    from CervixAutoSegLib.ct.preprocess import restore_crops
    from CervixAutoSegLib.ct.runner import crop_ring, field_of_view_border, restore_map, ring_width
    from CervixAutoSegLib.qa.maps import nearest_in_plane

    _, context = preprocess_ct(volume)
    rng = np.random.default_rng(len(name))
    crops = rng.integers(1, 256, (len(context.slice_indices), 256, 256), dtype=np.uint8)
    whole = restore_crops(crops, context, nearest_in_plane)
    boxed = restore_map(crops, context)
    assert boxed.shape == whole.shape == volume.shape and boxed.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(boxed), whole)
    if not context.resampled:
        # only the footprint is stored (all of a grid smaller than the crop)
        assert boxed.values.size < whole.size or name == "crop-past-edge"
        assert np.count_nonzero(boxed.values) == np.count_nonzero(whole)
    for _ in range(20):  # boxes inside, across and outside the footprint
        low = rng.integers(0, volume.shape, 3)
        high = low + rng.integers(1, np.maximum(np.asarray(volume.shape) - low, 1) + 1)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        np.testing.assert_array_equal(boxed[box], whole[box])
    border = field_of_view_border(crops.shape, context)
    assert border.dtype == bool
    ring = restore_labels(crop_ring(crops.shape, ring_width(context)), context) > 0  # the whole grid's way
    np.testing.assert_array_equal(np.asarray(border), ring)
    assert np.asarray(border).any() != (name == "crop-past-edge")  # that crop's ring lies off the image
