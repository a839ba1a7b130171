"""Augmentation keeps labels valid and aligned with the image, and is reproducible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from CervixAutoSegLib.ct.augment import (NO_AUGMENTATION, AugmentParams, affine_from_three_points, augment_pair,
                                         elastic_displacement)

STRONG = AugmentParams(flip_probability=0.5, rotation_degrees=30, three_point_jitter=0.08, elastic_probability=1.0,
                       elastic_alpha=600, intensity_probability=1.0)
GEOMETRY_ONLY = dataclasses.replace(STRONG, intensity_probability=0.0)
VALUE_OF_LABEL = np.array([0.1, 0.3, 0.5, 0.7, 0.9], dtype=np.float32)


def phantom_slice(height: int = 96, width: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Non-square slice with four blobs; the image is a known function of the labels."""
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[((yy - 40) / 18.0) ** 2 + ((xx - 50) / 25.0) ** 2 < 1] = 1
    labels[((yy - 70) / 8.0) ** 2 + ((xx - 56) / 8.0) ** 2 < 1] = 2
    labels[(np.abs(yy - 45) < 6) & (np.abs(xx - 15) < 5)] = 3
    labels[(np.abs(yy - 45) < 6) & (np.abs(xx - 95) < 5)] = 4
    return VALUE_OF_LABEL[labels], labels


@pytest.mark.parametrize("seed", range(6))
def test_labels_stay_a_subset_of_the_original_values_with_same_dtype(seed):
    image, labels = phantom_slice()
    labels = labels.astype(np.int16) * 10  # values 0, 10, 20, 30, 40: no interpolation may invent 5 or 15
    out_image, out_labels = augment_pair(image, labels, np.random.default_rng(seed), STRONG, out_size=64,
                                         centre=(45.0, 50.0))
    assert out_labels.dtype == labels.dtype and out_labels.shape == (64, 64) and out_image.shape == (64, 64)
    assert set(np.unique(out_labels)) <= set(np.unique(labels))
    assert out_image.dtype == np.float32 and 0.0 <= out_image.min() and out_image.max() <= 1.0


@pytest.mark.parametrize("seed", range(6))
def test_image_and_labels_are_deformed_identically(seed):
    image, labels = phantom_slice()
    out_image, out_labels = augment_pair(image, labels, np.random.default_rng(seed), GEOMETRY_ONLY)
    # Away from label borders (and from the zero-filled outside), linear interpolation of
    # the image must give back exactly the value of the label found by nearest neighbour.
    interior = np.zeros(out_labels.shape, dtype=bool)
    for value in range(5):
        interior |= ndimage.binary_erosion(out_labels == value, iterations=2)
    inside_field = ndimage.binary_erosion(out_image > 0.05, iterations=2)
    checked = interior & inside_field
    assert checked.sum() > 0.5 * out_labels.size
    error = np.abs(out_image[checked] - VALUE_OF_LABEL[out_labels[checked]])
    # Exact almost everywhere; where a strong elastic field folds, a few pixels mix levels,
    # but never by a whole level step (0.2) as a one-pixel misalignment would.
    assert np.mean(error < 1e-5) > 0.995
    assert error.max() < 0.05


def test_same_seed_same_result_other_seed_other_result():
    image, labels = phantom_slice()
    first = augment_pair(image, labels, np.random.default_rng(7), STRONG, out_size=64)
    again = augment_pair(image, labels, np.random.default_rng(7), STRONG, out_size=64)
    other = augment_pair(image, labels, np.random.default_rng(8), STRONG, out_size=64)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_no_augmentation_is_the_identity_and_a_sure_flip_mirrors_left_right():
    image, labels = phantom_slice()
    same_image, same_labels = augment_pair(image, labels, np.random.default_rng(0), NO_AUGMENTATION)
    assert np.array_equal(same_labels, labels) and np.allclose(same_image, image)
    flip = dataclasses.replace(NO_AUGMENTATION, flip_probability=1.0)
    flipped_image, flipped_labels = augment_pair(image, labels, np.random.default_rng(0), flip)
    assert np.array_equal(flipped_labels, labels[:, ::-1])
    assert np.allclose(flipped_image, image[:, ::-1])


def test_patch_is_centred_on_the_requested_position():
    image, labels = phantom_slice()
    _, patch = augment_pair(image, labels, np.random.default_rng(0), NO_AUGMENTATION, out_size=16,
                            centre=(70.0, 56.0))  # centre of the label-2 disc
    assert np.all(patch[4:12, 4:12] == 2)


def test_three_point_affine_recovers_a_known_affine_and_refuses_collinear_points():
    truth = np.array([[1.1, 0.2, 3.0], [-0.1, 0.9, -2.0]])
    source = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    target = source @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(affine_from_three_points(source, target), truth, atol=1e-12)
    with pytest.raises(ValueError, match="collinear"):
        affine_from_three_points(np.array([[0, 0], [1, 1], [2, 2]]), target)


def test_elastic_field_is_smooth_and_scales_with_alpha():
    small = elastic_displacement((64, 64), np.random.default_rng(0), alpha=100, sigma=8)
    large = elastic_displacement((64, 64), np.random.default_rng(0), alpha=400, sigma=8)
    np.testing.assert_allclose(large, 4 * small)
    assert np.abs(np.diff(small, axis=2)).max() < 0.2 * np.abs(small).max()
