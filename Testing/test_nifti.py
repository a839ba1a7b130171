"""NIfTI files written without SimpleITK read back, through SimpleITK/ITK, with the exact voxels and
geometry, on every kind of grid a scanner produces; and their headers agree with ITK's own."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from CervixAutoSegLib.image_io import load_image, write_image
from CervixAutoSegLib.nifti import HEADER, VOXEL_OFFSET, nifti_header, quaternion
from CervixAutoSegLib.volume import Volume


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


# LPS direction matrices (columns = i, j, k directions): head-first supine, feet-first (i and k
# mirrored), prone, a left-handed grid (qfac -1), sagittal, coronal, two oblique tilts, and a rotation
# near 180 degrees (the quaternion's small-trace branches).
DIRECTIONS = {
    "HFS": np.eye(3),
    "FFS": np.diag([-1.0, 1.0, -1.0]),
    "HFP": np.diag([-1.0, -1.0, 1.0]),
    "left-handed": np.diag([1.0, 1.0, -1.0]),
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float),
    "oblique": rotation("x", 17) @ rotation("z", -23),
    "oblique-left-handed": rotation("y", 31) @ np.diag([1.0, -1.0, 1.0]),
    "near-180": rotation("z", 179) @ rotation("x", 2),
}


def volume(direction: np.ndarray, dtype=np.uint8, shape=(7, 12, 10)) -> Volume:
    rng = np.random.default_rng(3)
    array = rng.integers(0, 120, shape).astype(dtype)
    if np.dtype(dtype).kind == "f":
        array = array * np.asarray(0.37, dtype) - np.asarray(20, dtype)
    return Volume(array=array, spacing=np.array([0.4688, 0.91, 3.0]), origin=np.array([-120.25, 33.5, -701.125]),
                  direction=direction, modality="CT")


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_written_nifti_reads_back_exactly_through_itk(tmp_path, name, suffix):
    original = volume(DIRECTIONS[name])
    write_image(original, tmp_path / f"labels{suffix}")
    back = load_image(tmp_path / f"labels{suffix}")
    assert back.array.dtype == original.array.dtype
    np.testing.assert_array_equal(back.array, original.array)
    np.testing.assert_allclose(back.spacing, original.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, original.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, original.direction, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_every_voxel_type_keeps_its_values_and_type(tmp_path, dtype):
    original = volume(DIRECTIONS["oblique"], dtype)
    write_image(original, tmp_path / "image.nii.gz")
    back = load_image(tmp_path / "image.nii.gz")
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, original.array)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_the_header_agrees_with_the_one_itk_writes(tmp_path, name):
    original = volume(DIRECTIONS[name])
    sitk.WriteImage(original.to_sitk(), str(tmp_path / "itk.nii"))
    theirs = np.frombuffer((tmp_path / "itk.nii").read_bytes()[:HEADER.itemsize], HEADER)[0]
    ours = np.frombuffer(nifti_header(original)[:HEADER.itemsize], HEADER)[0]
    for field in ("dim", "datatype", "bitpix", "qform_code", "sform_code", "xyzt_units"):
        np.testing.assert_array_equal(ours[field], theirs[field], err_msg=field)
    for field in ("pixdim", "qoffset", "srow", "vox_offset"):
        np.testing.assert_allclose(ours[field], theirs[field], atol=2e-5, err_msg=field)
    # (b, c, d) and (-b, -c, -d) with a = 0 are one rotation: compare the rotations they make
    np.testing.assert_allclose(np.abs(ours["quatern"]), np.abs(theirs["quatern"]), atol=2e-5)
    assert ours["magic"] == theirs["magic"] == b"n+1"


def test_quaternion_rebuilds_the_rotation(tmp_path):
    for name, direction in DIRECTIONS.items():
        ras = np.diag([-1.0, -1.0, 1.0]) @ direction
        (b, c, d), qfac = quaternion(ras)
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rebuilt = np.array([
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
        rebuilt[:, 2] *= qfac
        np.testing.assert_allclose(rebuilt, ras, atol=1e-9, err_msg=name)


def test_compressed_file_is_plain_gzip_with_the_voxels_after_byte_352(tmp_path):
    original = volume(DIRECTIONS["HFS"])
    write_image(original, tmp_path / "labels.nii.gz")
    content = gzip.decompress((tmp_path / "labels.nii.gz").read_bytes())
    assert len(content) == VOXEL_OFFSET + original.array.nbytes
    np.testing.assert_array_equal(np.frombuffer(content[VOXEL_OFFSET:], np.uint8).reshape(original.shape),
                                  original.array)


def test_big_endian_voxels_are_written_little_endian_with_their_values(tmp_path):
    original = volume(DIRECTIONS["oblique"], np.int16)
    swapped = original.with_array(original.array.astype(">i2"))
    write_image(swapped, tmp_path / "image.nii.gz")
    np.testing.assert_array_equal(load_image(tmp_path / "image.nii.gz").array, original.array)


@pytest.mark.parametrize("shape", [(0, 6, 7), (2, 3, 40000)])
def test_a_grid_nifti_cannot_hold_is_refused_in_one_line_and_nothing_is_left(tmp_path, shape):
    from CervixAutoSegLib.errors import InputError

    empty = Volume(array=np.zeros(shape, np.uint8), spacing=np.ones(3), origin=np.zeros(3), direction=np.eye(3),
                   modality="CT")
    with pytest.raises(InputError, match="NIfTI-1 cannot hold"):
        write_image(empty, tmp_path / "labels.nii.gz")
    assert list(tmp_path.iterdir()) == []
