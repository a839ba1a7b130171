"""Volume geometry and its lossless conversions."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.volume import Volume


def _oblique_direction() -> np.ndarray:
    angle = np.deg2rad(17.0)
    rotation_z = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.deg2rad(-9.0)
    rotation_x = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    return rotation_z @ rotation_x @ np.diag([1.0, -1.0, -1.0])


@pytest.fixture
def oblique_volume() -> Volume:
    rng = np.random.default_rng(3)
    return Volume(
        array=rng.integers(-1024, 3000, size=(7, 11, 13)).astype(np.int16),
        spacing=(0.7, 0.9, 3.0),
        origin=(-120.5, 88.25, -402.0),
        direction=_oblique_direction(),
        modality="CT",
    )


def test_index_to_physical_matches_sitk(oblique_volume: Volume) -> None:
    image = oblique_volume.to_sitk()
    for ijk in [(0, 0, 0), (12, 10, 6), (3, 7, 2)]:
        expected = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(oblique_volume.index_to_physical(ijk), expected, atol=1e-9)
        np.testing.assert_allclose(oblique_volume.physical_to_index(expected), ijk, atol=1e-9)


def test_array_axis_order_is_zyx(oblique_volume: Volume) -> None:
    image = oblique_volume.to_sitk()
    assert image.GetSize() == oblique_volume.size_ijk == (13, 11, 7)
    assert image[12, 3, 5] == oblique_volume.array[5, 3, 12]


def test_sitk_round_trip_is_lossless(oblique_volume: Volume) -> None:
    back = Volume.from_sitk(oblique_volume.to_sitk(), modality="CT")
    assert back.array.dtype == oblique_volume.array.dtype
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert back.same_grid(oblique_volume, tolerance=1e-12)


def test_ijk_to_ras_round_trip_and_sign(oblique_volume: Volume) -> None:
    ras = oblique_volume.ijk_to_ras
    lps = oblique_volume.index_to_physical((2, 3, 4))
    np.testing.assert_allclose((ras @ [2, 3, 4, 1])[:3], lps * [-1, -1, 1], atol=1e-9)
    back = Volume.from_ijk_to_ras(oblique_volume.array, ras)
    assert back.same_grid(oblique_volume, tolerance=1e-9)


def test_sheared_grid_is_kept_exactly() -> None:
    tilt = np.deg2rad(12.0)
    direction = np.array([[1, 0, 0], [0, 1, np.sin(tilt)], [0, 0, np.cos(tilt)]])
    direction[:, 2] /= np.linalg.norm(direction[:, 2])
    volume = Volume(np.zeros((4, 5, 6), np.int16), (1, 1, 2.5), (0, 0, 0), direction)
    assert not volume.is_orthogonal
    back = Volume.from_sitk(volume.to_sitk())
    np.testing.assert_allclose(back.direction, direction, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spacing": (1, 0, 1)}, "spacing must be positive"),
        ({"direction": np.zeros((3, 3))}, "singular"),
        ({"origin": (0, 0)}, "origin must be 3"),
        ({"array": np.zeros((4, 4))}, "3D array"),
    ],
)
def test_invalid_geometry_is_rejected(kwargs: dict, message: str) -> None:
    fields = {"array": np.zeros((2, 2, 2)), "spacing": (1, 1, 1), "origin": (0, 0, 0), "direction": np.eye(3)}
    fields.update(kwargs)
    with pytest.raises(InputError, match=message):
        Volume(**fields)
