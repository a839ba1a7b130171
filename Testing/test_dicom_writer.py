"""dicom_writer: files a TPS and dciodvfy accept, with the geometry in the right tags."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import make_volume, rotation

from CervixAutoSegLib.decimal_strings import format_ds
from CervixAutoSegLib.dicom_writer import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, write_dicom_series
from CervixAutoSegLib.errors import InputError

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path) -> list[str]:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_dciodvfy_reports_no_errors_for_oblique_series(tmp_path, modality):
    volume = make_volume((3, 12, 20), direction=rotation(10, -20, 35), modality=modality)
    paths = write_dicom_series(volume, tmp_path, modality=modality, patient_position="FFP", series_description="x")
    for path in paths:
        assert dciodvfy_errors(path) == []


def test_ct_tags_carry_geometry_in_dicom_order(tmp_path):
    direction = rotation(0, 0, 30)
    volume = make_volume((4, 10, 16), spacing_xyz=(0.7, 1.1, 2.5), origin=(-10.0, 20.0, 30.0), direction=direction)
    paths = write_dicom_series(volume, tmp_path, modality="CT", patient_position="HFP")
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == CT_IMAGE_STORAGE
        assert ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
        assert (ds.Rows, ds.Columns) == (10, 16)
        # Pixel Spacing is (between rows, between columns) = (y, x).
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [1.1, 0.7])
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                                   np.concatenate([direction[:, 0], direction[:, 1]]), atol=1e-12)
        expected = np.array([-10.0, 20.0, 30.0]) + k * 2.5 * direction[:, 2]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected, atol=1e-9)
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        assert ds.PatientPosition == "HFP"
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, volume.array[k])


def test_mr_sequence_attributes(tmp_path):
    volume = make_volume((2, 8, 8), modality="MR")
    sequence = {"EchoTime": 12.5, "RepetitionTime": 650, "ProtocolName": "t1_tse_tra", "SequenceVariant": ["SK"]}
    path = write_dicom_series(volume, tmp_path, modality="MR", mr_sequence=sequence)[0]
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == MR_IMAGE_STORAGE
    assert float(ds.EchoTime) == 12.5 and float(ds.RepetitionTime) == 650
    assert ds.ProtocolName == "t1_tse_tra"
    assert ds.ScanningSequence == "SE" and ds.SequenceVariant == "SK"
    np.testing.assert_array_equal(ds.pixel_array, volume.array[0])


def test_shuffled_names_and_instance_numbers_carry_no_order(tmp_path):
    volume = make_volume((8, 4, 4))
    paths = write_dicom_series(volume, tmp_path, shuffle_seed=3)
    numbers = [int(pydicom.dcmread(p).InstanceNumber) for p in paths]
    assert sorted(numbers) == list(range(1, 9)) and numbers != sorted(numbers)
    assert [p.name for p in paths] != sorted(p.name for p in paths)


def test_patient_attributes_are_written(tmp_path):
    path = write_dicom_series(make_volume((1, 4, 4)), tmp_path,
                              patient={"PatientName": "Doe^Jane", "PatientID": "123", "PatientBirthDate": "19700101"})[0]
    ds = pydicom.dcmread(path)
    assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == ("Doe^Jane", "123", "19700101", "F")


def test_uids_are_shared_per_series_and_unique_per_instance(tmp_path):
    volume = make_volume((3, 4, 4))
    paths = write_dicom_series(volume, tmp_path, study_instance_uid="1.2.3", frame_of_reference_uid="1.2.4")
    datasets = [pydicom.dcmread(p) for p in paths]
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3"}
    assert {ds.FrameOfReferenceUID for ds in datasets} == {"1.2.4"}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3


def test_ct_values_outside_uint16_window_fall_back_to_signed(tmp_path):
    volume = make_volume((2, 4, 4)).with_array(np.full((2, 4, 4), -2000, np.int16))
    path = write_dicom_series(volume, tmp_path)[0]
    ds = pydicom.dcmread(path)
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), -2000)


@pytest.mark.parametrize("value", [-0.7071067811865476, 123456.78901234567, 1e-20, -3.0e17, 0.1 + 0.2, 5.0])
def test_format_ds_fits_16_characters_and_keeps_precision(value):
    text = format_ds(value)
    assert len(text) <= 16
    assert float(text) == pytest.approx(value, rel=1e-9)
    pydicom.valuerep.DS(text, validation_mode=pydicom.config.RAISE)


def test_writer_rejects_bad_arguments(tmp_path):
    volume = make_volume((2, 4, 4))
    with pytest.raises(InputError, match="CT or MR"):
        write_dicom_series(volume, tmp_path, modality="RTDOSE")
    with pytest.raises(InputError, match="patient position"):
        write_dicom_series(volume, tmp_path, patient_position="UPSIDE")
    with pytest.raises(InputError, match="slice_positions"):
        write_dicom_series(volume, tmp_path, slice_positions=np.zeros((3, 3)))
    with pytest.raises(InputError, match="unknown DICOM keyword.*EchoTme"):
        write_dicom_series(volume, tmp_path, modality="MR", mr_sequence={"EchoTme": 90})
    with pytest.raises(InputError, match="NaN"):
        write_dicom_series(volume.with_array(np.full((2, 4, 4), np.nan)), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_non_integer_ct_is_quantised_within_half_a_step(tmp_path):
    from CervixAutoSegLib.dicom_series import read_dicom_series

    values = np.linspace(-1500.25, 2500.75, 2 * 6 * 6).reshape(2, 6, 6)
    volume = make_volume((2, 6, 6)).with_array(values)
    path = write_dicom_series(volume, tmp_path)[0]
    slope = float(pydicom.dcmread(path).RescaleSlope)
    loaded = read_dicom_series(tmp_path)
    assert loaded.array.dtype == np.float32
    np.testing.assert_allclose(loaded.array, values, atol=slope / 2 + 1e-3)


REAL_IMAGES = Path(__file__).parent / "Data"  # see Data/README.md


@pytest.mark.parametrize("name, modality", [("real_ct_abdomen_pelvis_3mm.nii.gz", "CT"),
                                            ("real_mr_abdomen_3mm.nii.gz", "MR")])
def test_real_scans_survive_nifti_to_dicom_to_volume(tmp_path, name, modality):
    from CervixAutoSegLib.dicom_series import read_dicom_series
    from CervixAutoSegLib.image_io import load_image

    original = load_image(REAL_IMAGES / name, modality=modality)
    paths = write_dicom_series(original, tmp_path, modality=modality, shuffle_seed=0)
    if DCIODVFY:
        assert dciodvfy_errors(paths[0]) == []
    loaded = read_dicom_series(tmp_path)
    assert loaded.modality == modality
    np.testing.assert_array_equal(loaded.array, original.array)
    np.testing.assert_allclose(loaded.direction, original.direction, atol=1e-6)
    np.testing.assert_allclose(loaded.origin, original.origin, atol=1e-6)
    np.testing.assert_allclose(loaded.spacing, original.spacing, atol=1e-6)
