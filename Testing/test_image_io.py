"""image_io: NIfTI/NRRD/MetaImage keep voxels and LPS geometry; DICOM paths go to the series reader."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from dicom_factory import make_volume, rotation, write

from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.image_io import guess_modality, load_image, write_image
from CervixAutoSegLib.volume import Volume

NIFTI_SROW_OFFSET = 280
"""Byte offset of srow_x in a NIfTI-1 header (then srow_y, srow_z: 4 float32 each)."""
NIFTI_SFORM_CODE_OFFSET = 254
FLOAT32_RELATIVE = 2e-7
"""NIfTI keeps its affine in float32: ~1e-7 relative precision."""


def oblique_volume(dtype=np.int16) -> Volume:
    volume = make_volume((5, 12, 9), spacing_xyz=(0.7, 1.1, 3.0), origin=(-12.5, 40.25, -7.75),
                         direction=rotation(15, -30, 25))
    return volume.with_array(volume.array.astype(dtype))


def nifti_sform(path) -> tuple[int, np.ndarray]:
    """(sform_code, 3x4 srow matrix) read straight from the NIfTI-1 header bytes."""
    raw = path.read_bytes()
    header = gzip.decompress(raw) if path.name.endswith(".gz") else raw
    (code,) = struct.unpack_from("<h", header, NIFTI_SFORM_CODE_OFFSET)
    rows = np.array(struct.unpack_from("<12f", header, NIFTI_SROW_OFFSET)).reshape(3, 4)
    return code, rows


@pytest.mark.parametrize("name", ["image.nii.gz", "image.nii", "image.nrrd", "image.mha"])
def test_round_trip_keeps_voxels_and_oblique_geometry(tmp_path, name):
    volume = oblique_volume()
    write_image(volume, tmp_path / name)
    loaded = load_image(tmp_path / name)
    assert loaded.meta["source"] == {"nii": "nifti", "nrrd": "nrrd", "mha": "metaimage"}[name.split(".")[1]]
    np.testing.assert_array_equal(loaded.array, volume.array)
    assert loaded.array.dtype == volume.array.dtype
    tolerance = 1e-6 if not name.startswith("image.nii") else 1e-6 + FLOAT32_RELATIVE * 50
    np.testing.assert_allclose(loaded.origin, volume.origin, atol=tolerance)
    np.testing.assert_allclose(loaded.spacing, volume.spacing, atol=tolerance)
    np.testing.assert_allclose(loaded.direction, volume.direction, atol=tolerance)
    # The same voxel is at the same LPS point.
    np.testing.assert_allclose(loaded.index_to_physical([8, 11, 4]), volume.index_to_physical([8, 11, 4]), atol=1e-5)


def test_nifti_on_disk_is_ras(tmp_path):
    """NIfTI stores RAS: x and y rows of the sform are the negated LPS ones."""
    volume = oblique_volume()
    write_image(volume, tmp_path / "image.nii.gz")
    code, srow = nifti_sform(tmp_path / "image.nii.gz")
    assert code > 0
    expected = (np.diag([-1.0, -1.0, 1.0]) @ volume.index_to_lps[:3, :])
    np.testing.assert_allclose(srow, expected, atol=1e-4)


def test_nrrd_header_is_lps_with_full_precision(tmp_path):
    import nrrd

    volume = oblique_volume(np.float32)
    write_image(volume, tmp_path / "image.nrrd")
    header = nrrd.read_header(str(tmp_path / "image.nrrd"))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space origin"], volume.origin, atol=1e-12)
    # NRRD space directions are listed per axis (i, j, k): direction column x spacing.
    np.testing.assert_allclose(header["space directions"], (volume.direction * volume.spacing).T, atol=1e-12)


def test_sheared_grid_needs_nrrd(tmp_path):
    direction = np.column_stack([(1, 0, 0), (0, 1, 0), (0, np.sin(0.3), np.cos(0.3))])
    volume = make_volume((3, 6, 6), direction=direction)
    with pytest.raises(InputError, match="NIfTI cannot store a sheared"):
        write_image(volume, tmp_path / "tilted.nii.gz")
    assert not (tmp_path / "tilted.nii.gz").exists()
    write_image(volume, tmp_path / "tilted.nrrd")
    loaded = load_image(tmp_path / "tilted.nrrd")
    assert loaded.same_grid(volume, tolerance=1e-9)
    np.testing.assert_array_equal(loaded.array, volume.array)


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "image.nrrd"
    write_image(oblique_volume(), target)
    before = target.read_bytes()
    with pytest.raises(InputError):
        write_image(oblique_volume(), tmp_path / "image.png")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nrrd"]


def test_bool_labels_are_written_as_uint8(tmp_path):
    volume = oblique_volume()
    write_image(volume.with_array(volume.array > 0), tmp_path / "mask.nii.gz")
    loaded = load_image(tmp_path / "mask.nii.gz")
    assert loaded.array.dtype == np.uint8
    np.testing.assert_array_equal(loaded.array, volume.array > 0)


def test_load_dicom_folder_and_single_file(tmp_path):
    volume = make_volume((4, 8, 10), direction=rotation(0, 0, 20))
    paths = write(volume, tmp_path / "dicom", shuffle_seed=9)
    from_folder = load_image(tmp_path / "dicom")
    assert from_folder.same_grid(volume, tolerance=1e-6) and from_folder.meta["source"] == "dicom"
    np.testing.assert_array_equal(from_folder.array, volume.array)
    single = load_image(paths[0])
    assert single.shape == (1, 8, 10) and single.meta["single_slice"] is True


def test_dicom_to_nifti_keeps_positions(tmp_path):
    """DICOM → NIfTI → Volume: a voxel keeps its LPS position (no RAS/LPS mix-up)."""
    volume = make_volume((4, 8, 10), origin=(30.0, -20.0, 100.0))
    write(volume, tmp_path / "dicom")
    write_image(load_image(tmp_path / "dicom"), tmp_path / "ct.nii.gz")
    loaded = load_image(tmp_path / "ct.nii.gz")
    np.testing.assert_allclose(loaded.index_to_physical([9, 7, 3]), volume.index_to_physical([9, 7, 3]), atol=1e-4)
    np.testing.assert_array_equal(loaded.array, volume.array)


def test_modality_is_given_or_guessed(tmp_path):
    ct = make_volume((3, 8, 8)).with_array(np.full((3, 8, 8), -1000, np.int16))
    mr = make_volume((3, 8, 8), modality="MR")
    write_image(ct, tmp_path / "ct.nrrd")
    write_image(mr, tmp_path / "mr.nrrd")
    assert guess_modality(ct) == "CT" and guess_modality(mr) == "MR"
    assert load_image(tmp_path / "ct.nrrd").modality == "CT"
    loaded = load_image(tmp_path / "mr.nrrd")
    assert loaded.modality == "MR" and loaded.meta["modality_source"] == "guessed"
    assert loaded.meta["is_t2"] is None
    forced = load_image(tmp_path / "ct.nrrd", modality="mr", t2=True)
    assert forced.modality == "MR" and forced.meta["modality_source"] == "given" and forced.meta["is_t2"] is True


def test_real_ct_test_image_reads_in_lps(tmp_path):
    """The shared real CT: LPS direction diag(-1,-1,1) as its README says, HU values."""
    from pathlib import Path

    path = Path(__file__).parent / "Data" / "real_ct_abdomen_pelvis_3mm.nii.gz"  # see Data/README.md
    volume = load_image(path)
    assert volume.size_ijk == (122, 101, 112)
    np.testing.assert_allclose(volume.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    assert volume.modality == "CT" and volume.array.min() <= -1000


@pytest.mark.parametrize(
    "content, name, message",
    [
        (None, "missing.nii.gz", "does not exist"),
        (b"not an image", "broken.nii.gz", "cannot read image"),
        (b"plain text", "notes.txt", "neither DICOM nor a known image format"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as raised:
        load_image(path)
    assert "\n" not in str(raised.value)


def test_four_dimensional_nifti_is_refused(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False)
    sitk.WriteImage(image, str(tmp_path / "series.nii.gz"))
    with pytest.raises(InputError, match="4D image"):
        load_image(tmp_path / "series.nii.gz")
