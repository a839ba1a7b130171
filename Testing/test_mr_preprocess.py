"""MR preprocessing (MIST recipe) and its inverse onto the input grid, on MR phantoms
acquired axially, sagittally and obliquely, plus the building blocks it relies on.

The phantom anatomy is defined in LPS millimetres, so the same seed scanned in another
plane is the same patient: after the exact reorientation both must give working arrays
along the same patient axes, at 0.469 x 0.469 x 5 mm, with the organ at the same place.
Phantom grids are small (96 x 96 pixels of 2 mm) to keep the tests fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.mr.preprocess import (MRPreprocessContext, MRPreprocessing, foreground_mask, otsu_threshold,
                                            preprocess_labels, preprocess_mr, resample_axis, restore_labels,
                                            restore_probabilities)
from CervixAutoSegLib.phantom import make_mr_phantom
from CervixAutoSegLib.volume import Volume

SEED = 1
TARGET = (0.469, 0.469, 5.0)
GRID = {"matrix": 96, "pixel_spacing_mm": 2.0}
ANATOMY = {"tumour_radius_mm": 30.0}
"""A locally advanced tumour (~90 ml).  The working grid's 5 mm slices are the limit of any
round trip: a ~5 ml tumour on a sagittal grid comes back at Dice ~0.92-0.95 because the
working grid cannot hold it more finely (the inverse itself is exact, see
test_inverse_is_exact_when_no_resampling_is_needed)."""
ACQUISITIONS = {
    "axial": {"plane": "axial", "slice_thickness_mm": 5.0, "tilt_deg": [0.0, 0.0, 0.0]},
    "sagittal": {"plane": "sagittal", "slice_thickness_mm": 4.0, "tilt_deg": [0.0, 0.0, 0.0]},
    "oblique": {"plane": "axial", "slice_thickness_mm": 4.0, "tilt_deg": [15.0, 0.0, 8.0]},
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.sum(a & b)) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def cases():
    """name → (phantom, working image, context, working labels)."""
    out = {}
    for name, acquisition in ACQUISITIONS.items():
        phantom = make_mr_phantom(SEED, **GRID, **ANATOMY, **acquisition)
        image, context = preprocess_mr(phantom.image)
        out[name] = (phantom, image, context, preprocess_labels(phantom.labels.array, context))
    return out


# ------------------------------------------------------------- parameters
def test_parameters_round_trip_through_json():
    params = MRPreprocessing()
    card = json.loads(json.dumps(params.to_dict()))
    assert card["spacing_mm"] == list(TARGET) and card["clip_percentiles"] == [0.5, 99.5]
    assert MRPreprocessing.from_dict(card) == params
    assert MRPreprocessing.from_dict(None) == params
    custom = MRPreprocessing(normalisation_region="image", coarse_axis_order=1)
    assert MRPreprocessing.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    with pytest.raises(ValueError):
        MRPreprocessing(normalisation_region="otsu")
    with pytest.raises(ValueError):
        MRPreprocessing(image_order=2)


def test_context_round_trips_through_json(cases):
    context = cases["oblique"][2]
    again = MRPreprocessContext.from_dict(json.loads(json.dumps(context.to_dict())))
    assert again == context


# ------------------------------------------------------------ working grid
@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_working_grid_is_the_target_spacing_along_the_reoriented_axes(cases, name):
    phantom, image, context, labels = cases[name]
    assert image.dtype == np.float32 and image.shape == context.working_shape == labels.shape
    assert context.working_spacing == TARGET
    working = context.working_volume(image)
    assert np.allclose(working.spacing, TARGET)
    spacing_zyx = np.asarray(context.oriented_spacing[::-1])
    expected = np.floor(np.asarray(context.crop_size) * spacing_zyx / np.asarray(TARGET[::-1]) + 0.5)
    assert tuple(expected.astype(int)) == context.working_shape
    direction = working.direction
    if name == "oblique":
        # Obliquity is kept: axes closest to L, P, S, but not equal to them.
        assert np.all(np.diag(direction) > 0.9) and not np.allclose(direction, np.eye(3), atol=0.05)
        assert np.allclose(direction, phantom.image.direction, atol=1e-9)  # already LPS-ordered
    else:
        assert np.allclose(direction, np.eye(3), atol=1e-9)


@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_working_labels_sit_where_the_truth_is(cases, name):
    phantom, _, context, labels = cases[name]
    truth = phantom.labels
    for value in (1, 2):
        on_input = truth.index_to_physical(np.argwhere(truth.array >= value)[:, ::-1].mean(axis=0))
        working = context.working_volume(labels)
        on_working = working.index_to_physical(np.argwhere(labels >= value)[:, ::-1].mean(axis=0))
        assert np.linalg.norm(on_working - on_input) < 1.0


def test_axial_and_sagittal_scans_of_one_patient_give_the_same_working_layout(cases):
    extents = {}
    for name in ("axial", "sagittal"):
        _, _, context, labels = cases[name]
        organ = np.argwhere(labels >= 1)
        extents[name] = np.ptp(organ, axis=0) * np.asarray(context.working_spacing[::-1])  # (z, y, x) mm
        assert np.allclose(context.working_volume(labels).direction, np.eye(3), atol=1e-9)
    axial, sagittal = extents["axial"], extents["sagittal"]
    assert axial[0] > 100 and axial[1] > 30 and axial[2] > 30  # a long organ along z (S)
    assert abs(axial[0] - sagittal[0]) <= TARGET[2] + 1e-6  # one working slice
    assert np.all(np.abs(axial[1:] - sagittal[1:]) <= 3.0)  # in-plane: about one 2 mm input pixel


# ---------------------------------------------------------- intensities
@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_image_is_z_scored_inside_the_foreground(cases, name):
    _, image, context, _ = cases[name]
    region = image != 0
    assert region.mean() > 0.99  # T2w magnitude with noise: the nonzero region is the whole crop
    assert abs(float(image[region].mean())) < 1e-3
    assert abs(float(image[region].std()) - 1.0) < 1e-3
    high = (context.clip_high - context.mean) / context.std
    low = (context.clip_low - context.mean) / context.std
    assert image.max() <= high + 1e-4 and image.min() >= low - 1e-4
    assert context.clip_low < context.mean < context.clip_high


def test_nonzero_region_ignores_zero_filled_voxels(cases):
    phantom = cases["axial"][0]
    array = phantom.image.array.copy()
    array[:, :20, :20] = 0  # zero-filled corner, as some reconstructions write
    image, context = preprocess_mr(phantom.image.with_array(array))
    region = image != 0
    assert not region.all() and abs(float(image[region].mean())) < 1e-3
    whole, _ = preprocess_mr(phantom.image.with_array(array), {"normalisation_region": "image"})
    assert abs(float(whole.mean())) < 1e-3 and abs(float(whole.std()) - 1.0) < 1e-3


# ------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_labels_come_back_on_the_input_grid(cases, name):
    phantom, _, context, labels = cases[name]
    restored = restore_labels(labels, context)
    truth = phantom.labels.array
    assert restored.dtype == np.uint8 and restored.shape == truth.shape and restored.flags.c_contiguous
    for value in (1, 2):
        assert dice(restored >= value, truth >= value) >= 0.95, (name, value)
    assert set(np.unique(restored)) <= {0, 1, 2}


def test_probabilities_come_back_on_the_input_grid(cases):
    phantom, _, context, labels = cases["oblique"]
    one_hot = np.stack([labels == v for v in range(3)]).astype(np.float32)
    restored = restore_probabilities(one_hot, context)
    assert restored.shape == (3,) + phantom.image.shape and restored.dtype == np.float32
    assert np.allclose(restored.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(restored.argmax(axis=0).astype(np.uint8), restore_labels(labels, context))
    with pytest.raises(ValueError):
        restore_probabilities(one_hot[:, :-1], context)


def _sagittal_volume_at_target_spacing() -> tuple[Volume, np.ndarray]:
    """A sagittal grid (rows P, columns I, slices R) already at 0.469 x 0.469 x 5 mm once
    reoriented: no interpolation anywhere, so the round trip must be exact."""
    rng = np.random.default_rng(7)
    direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: i→P, j→I, k→R
    shape = (40, 9, 48)  # (k: L-R slices, j: S-I rows, i: A-P columns)
    array = rng.normal(50, 10, shape).clip(1).astype(np.float32)
    array[5:35, 2:8, 6:44] += rng.uniform(200, 1000, (30, 6, 38))  # a bright "body" in dim noise
    labels = np.zeros(shape, np.uint8)
    labels[8:30, 3:7, 10:40] = rng.integers(0, 3, (22, 4, 30))
    volume = Volume(array, (0.469, 5.0, 0.469), (10.0, -20.0, 30.0), direction, modality="MR")
    return volume, labels


def test_inverse_is_exact_when_no_resampling_is_needed():
    volume, labels = _sagittal_volume_at_target_spacing()
    image, context = preprocess_mr(volume)
    assert context.crop_start == (1, 6, 5) and context.crop_size == (6, 38, 30)
    assert context.working_shape == context.crop_size
    working = preprocess_labels(labels, context)
    assert np.array_equal(restore_labels(working, context), labels)
    # Working voxel (0, 0, 0) is reoriented (z, y, x) = crop_start = (1, 6, 5), i.e. input
    # (i, j, k) = (6, 8 - 1, 39 - 5): the same point in LPS.
    corner = context.working_volume(image).index_to_physical(np.zeros(3))
    assert np.allclose(corner, volume.index_to_physical(np.array([6.0, 7.0, 34.0])), atol=1e-9)
    # The working image is the reoriented crop (z towards S, y towards P, x towards L).
    oriented = np.transpose(volume.array, (1, 2, 0))[::-1, :, ::-1]
    crop = oriented[tuple(slice(s, s + n) for s, n in zip(context.crop_start, context.crop_size))]
    assert np.allclose(image * context.std + context.mean, np.clip(crop, context.clip_low, context.clip_high),
                       atol=1e-3)


def test_thick_slices_are_resampled_nearest_along_z():
    """MIST's anisotropy rule (spacing ratio > 3): nearest neighbour along the coarse axis."""
    values = 100.0 + 10.0 * np.arange(10)
    array = np.broadcast_to(values[:, None, None], (10, 12, 12)).astype(np.float32)
    volume = Volume(array, (0.5, 0.5, 4.0), (0, 0, 0), np.eye(3), modality="MR")
    params = {"crop_to_foreground": False, "normalisation_region": "image", "clip_percentiles": [0, 100]}
    image, context = preprocess_mr(volume, params)
    assert context.coarse_axis == 0 and context.working_shape == (8, 13, 13)
    raw = image * context.std + context.mean
    assert np.allclose(raw, raw[:, :1, :1], atol=1e-3)  # slices stay uniform (cubic in-plane)
    picked = np.round((raw[:, 0, 0] - 100.0) / 10.0).astype(int)
    assert picked.tolist() == [0, 1, 3, 4, 5, 6, 8, 9]  # nearest of 0, 1.25, 2.5, ... 8.75


def test_bad_inputs_are_refused(cases):
    _, _, context, labels = cases["axial"]
    with pytest.raises(InputError):
        preprocess_labels(np.zeros((3, 4, 5), np.uint8), context)
    with pytest.raises(ValueError):
        restore_labels(labels[:-1], context)


# ---------------------------------------------------------- building blocks
@pytest.mark.parametrize("order", [1, 3])
def test_separable_resampler_matches_scipy(order):
    rng = np.random.default_rng(3)
    array = rng.normal(size=(9, 11, 13)).astype(np.float32)
    positions = [np.linspace(0, 8, 7), np.linspace(0.3, 9.6, 17), np.linspace(0, 12, 25)]
    ours = array
    for axis in range(3):
        ours = resample_axis(ours, axis, positions[axis], order)
    grid = np.meshgrid(*positions, indexing="ij")
    reference = ndimage.map_coordinates(array.astype(np.float64), grid, order=order, mode="mirror")
    assert np.allclose(ours, reference, atol=1e-4)


def test_otsu_threshold_matches_scikit_image():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(100, 20, 5000), rng.normal(600, 80, 3000)]).astype(np.float32)
    assert otsu_threshold(values) == pytest.approx(float(threshold_otsu(values)), rel=1e-5)


def test_foreground_crop_drops_the_air_around_the_body():
    rng = np.random.default_rng(11)
    z, y, x = np.meshgrid(np.arange(20), np.arange(80), np.arange(90), indexing="ij")
    body = ((y - 40) / 25.0) ** 2 + ((x - 50) / 30.0) ** 2 < 1
    array = np.abs(rng.normal(0, 15, body.shape)) + body * rng.uniform(150, 900, body.shape)
    mask = foreground_mask(array)
    assert mask[~body].mean() < 0.01
    volume = Volume(array.astype(np.float32), (1.0, 1.0, 5.0), (0, 0, 0), np.eye(3), modality="MR")
    _, context = preprocess_mr(volume)
    start, size = context.crop_start, context.crop_size
    assert size[1] < 80 and size[2] < 90
    assert start[1] <= 16 and start[1] + size[1] >= 64 and start[2] <= 21 and start[2] + size[2] >= 79
