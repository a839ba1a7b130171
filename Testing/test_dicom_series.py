"""dicom_series: real DICOM (written by pydicom) → Volume with the right voxels in the right LPS place."""

from __future__ import annotations

import dataclasses
import os
import types

import numpy as np
import pydicom
import pytest
from dicom_factory import assert_same_image_in_lps, direction_for, edit_files, make_volume, rotation, write
from pydicom.data import get_testdata_file

from CervixAutoSegLib.dicom_series import choose_series, detect_t2, find_series, read_dicom_series
from CervixAutoSegLib.dicom_writer import CT_IMAGE_STORAGE
from CervixAutoSegLib.errors import InputError

PYDICOM_TEST_FILES = os.path.dirname(get_testdata_file("CT_small.dcm"))
DICOMDIR_TESTS = os.path.join(PYDICOM_TEST_FILES, "dicomdirtests")

LAYOUTS = {
    "HFS": direction_for("HFS"),
    "FFS": direction_for("FFS"),
    "HFP": direction_for("HFP"),
    "FFP": direction_for("FFP"),
    "HFDL": direction_for("HFDL"),
    "oblique": rotation(12, -25, 40),
    "coronal": np.column_stack([(1, 0, 0), (0, 0, -1), (0, 1, 0)]).astype(float),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_round_trip_keeps_voxels_and_geometry(tmp_path, layout):
    position = layout if layout in ("HFS", "FFS", "HFP", "FFP", "HFDL") else "HFS"
    volume = make_volume((7, 40, 56), spacing_xyz=(0.7, 1.1, 3.0), direction=LAYOUTS[layout])
    write(volume, tmp_path, patient_position=position, shuffle_seed=11)
    loaded = read_dicom_series(tmp_path)
    # Right-handed input: the reader's k (along row x column) is the writer's k.
    np.testing.assert_array_equal(loaded.array, volume.array)
    np.testing.assert_allclose(loaded.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(loaded.origin, volume.origin, atol=1e-6)
    np.testing.assert_allclose(loaded.direction, volume.direction, atol=1e-6)
    assert loaded.modality == "CT" and loaded.array.dtype == np.int16
    assert loaded.meta["patient_position"] == position


def test_marked_voxel_lands_on_its_lps_point_feet_first(tmp_path):
    """A bright voxel placed at a known LPS point is found there after the round trip."""
    volume = make_volume((9, 20, 24), spacing_xyz=(0.9, 0.9, 2.0), origin=(50.0, -30.0, -200.0),
                         direction=direction_for("FFS"))
    array = np.full(volume.shape, -1000, np.int16)
    array[6, 4, 17] = 1500
    volume = volume.with_array(array)
    point = np.array([50.0, -30.0, -200.0]) + 17 * 0.9 * np.array([-1, 0, 0]) + 4 * 0.9 * np.array([0, 1, 0]) \
        + 6 * 2.0 * np.array([0, 0, -1])
    write(volume, tmp_path, patient_position="FFS", shuffle_seed=5)
    loaded = read_dicom_series(tmp_path)
    k, j, i = np.argwhere(loaded.array == 1500)[0]
    np.testing.assert_allclose(loaded.index_to_physical([i, j, k]), point, atol=1e-6)


def test_left_handed_volume_comes_back_reordered_but_identical_in_lps(tmp_path):
    """Slices written with k against the normal are re-sorted along the normal."""
    volume = make_volume((5, 12, 10), direction=direction_for("HFS", slice_sign=-1.0))
    write(volume, tmp_path)
    loaded = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(loaded.array, volume.array[::-1])
    assert np.linalg.det(loaded.direction) > 0
    assert_same_image_in_lps(volume, loaded)


def test_sort_uses_positions_not_names_or_instance_numbers(tmp_path):
    volume = make_volume((6, 8, 8))
    names = [f"{name}.dcm" for name in ("f", "b", "e", "a", "d", "c")]
    paths = write(volume, tmp_path, file_names=names)
    # Instance numbers deliberately reversed relative to position.
    edit_files(paths, lambda ds: setattr(ds, "InstanceNumber", 100 - int(ds.InstanceNumber)))
    loaded = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(loaded.array, volume.array)
    assert [os.path.basename(f) for f in loaded.meta["files"]] == names


def test_meta_has_what_rtstruct_needs(tmp_path):
    volume = make_volume((4, 6, 6))
    paths = write(volume, tmp_path, series_description="Pelvis 3mm", shuffle_seed=2,
                  study_instance_uid="1.2.3.4", frame_of_reference_uid="1.2.3.5", series_instance_uid="1.2.3.6")
    meta = read_dicom_series(tmp_path).meta
    assert meta["source"] == "dicom" and meta["modality"] == "CT"
    assert (meta["study_instance_uid"], meta["frame_of_reference_uid"], meta["series_instance_uid"]) == (
        "1.2.3.4", "1.2.3.5", "1.2.3.6")
    assert meta["sop_class_uid"] == CT_IMAGE_STORAGE
    assert meta["series_description"] == "Pelvis 3mm"
    assert (meta["patient_name"], meta["patient_id"]) == ("CervixAutoSeg^Phantom", "CAS-PHANTOM")
    by_file = {str(p): pydicom.dcmread(p) for p in paths}
    for k, (file, uid, position) in enumerate(zip(meta["files"], meta["sop_instance_uids"], meta["slice_positions"])):
        assert by_file[file].SOPInstanceUID == uid
        np.testing.assert_allclose(position, volume.index_to_physical([0, 0, k]), atol=1e-9)
    assert meta["slice_spacing_nonuniform"] < 1e-6 and meta["gantry_tilt"] is False


def test_gantry_tilt_is_kept_as_a_sheared_grid(tmp_path):
    """IPPs stepping 15° off the normal: each slice keeps its plane, voxels untouched."""
    volume = make_volume((6, 16, 20), spacing_xyz=(0.8, 0.8, 1.0))
    tilt = np.deg2rad(15.0)
    step = np.array([0.0, 2.5 * np.tan(tilt), 2.5])  # 2.5 mm between planes, shifted posteriorly
    positions = np.asarray(volume.origin) + np.arange(6)[:, None] * step
    write(volume, tmp_path, slice_positions=positions, shuffle_seed=1)
    assert {float(pydicom.dcmread(p).SliceThickness) for p in tmp_path.iterdir()} == {2.5}
    loaded = read_dicom_series(tmp_path)
    assert loaded.meta["gantry_tilt"] is True and not loaded.is_orthogonal
    np.testing.assert_array_equal(loaded.array, volume.array)
    np.testing.assert_allclose(loaded.direction[:, 2], step / np.linalg.norm(step), atol=1e-9)
    assert loaded.spacing[2] == pytest.approx(np.linalg.norm(step))
    for k in range(6):
        # Voxel (0,0,k) sits on slice k's IPP; (i,j,k) lies in slice k's plane.
        np.testing.assert_allclose(loaded.index_to_physical([0, 0, k]), positions[k], atol=1e-6)
        corner = loaded.index_to_physical([19, 15, k])
        assert np.dot(corner - positions[k], [0, 0, 1]) == pytest.approx(0.0, abs=1e-6)


def test_gantry_tilt_round_trips_through_the_writer_geometry(tmp_path):
    direction = np.column_stack([(1, 0, 0), (0, 1, 0), (0, np.sin(0.2), np.cos(0.2))])
    volume = make_volume((5, 10, 12), direction=direction)
    write(volume, tmp_path)
    loaded = read_dicom_series(tmp_path)
    assert loaded.same_grid(volume, tolerance=1e-6)
    np.testing.assert_array_equal(loaded.array, volume.array)


def test_small_position_jitter_is_tolerated_and_reported(tmp_path):
    volume = make_volume((6, 8, 8), spacing_xyz=(1.0, 1.0, 3.0))
    positions = volume.index_to_physical(np.column_stack([np.zeros(6), np.zeros(6), np.arange(6)]))
    positions[3, 2] += 0.05
    write(volume, tmp_path, slice_positions=positions)
    loaded = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(loaded.array, volume.array)
    assert loaded.meta["slice_spacing_nonuniform"] == pytest.approx(0.05, abs=1e-6)
    assert loaded.spacing[2] == pytest.approx(3.0)


def test_rescale_is_applied_and_float_when_inexact(tmp_path):
    volume = make_volume((3, 6, 6))
    paths = write(volume, tmp_path)
    edit_files(paths, lambda ds: setattr(ds, "RescaleSlope", "0.5"))
    loaded = read_dicom_series(tmp_path)
    assert loaded.array.dtype == np.float32
    np.testing.assert_allclose(loaded.array, (volume.array + 1024) * 0.5 - 1024)


def test_mr_round_trip_and_t2_flag(tmp_path):
    volume = make_volume((4, 10, 8), modality="MR", direction=rotation(0, 90, 0))
    write(volume, tmp_path / "t2", modality="MR", series_description="T2 TSE sag")
    write(volume, tmp_path / "t1", modality="MR", series_description="T1 TSE sag",
          mr_sequence={"EchoTime": 10, "RepetitionTime": 500})
    t2 = read_dicom_series(tmp_path / "t2")
    np.testing.assert_array_equal(t2.array, volume.array)
    assert t2.modality == "MR" and t2.meta["is_t2"] is True
    assert read_dicom_series(tmp_path / "t1").meta["is_t2"] is False
    assert read_dicom_series(tmp_path / "t1", t2=True).meta["is_t2"] is True
    # Both in one folder: the only T2w MR is chosen; asking for non-T2 gives the other.
    assert read_dicom_series(tmp_path).meta["series_description"] == "T2 TSE sag"
    assert read_dicom_series(tmp_path, t2=False).meta["series_description"] == "T1 TSE sag"


def _header(**values):
    return types.SimpleNamespace(**values)


@pytest.mark.parametrize(
    "header, expected",
    [
        ({"SeriesDescription": "t2_tse_tra", "EchoTime": 101, "RepetitionTime": 4500}, True),
        ({"SeriesDescription": "Pelvis AX", "EchoTime": 95, "RepetitionTime": 3000}, True),
        ({"SeriesDescription": "AX T2 FRFSE"}, True),
        ({"SeriesDescription": "sag HASTE", "EchoTime": None, "RepetitionTime": None}, True),
        ({"SeriesDescription": "t1_tse_tra", "EchoTime": 11, "RepetitionTime": 600}, False),
        ({"SeriesDescription": "T2 FLAIR", "EchoTime": 120, "RepetitionTime": 9000}, False),
        ({"SeriesDescription": "ep2d_diff b800", "ScanningSequence": ["EP"], "EchoTime": 70, "RepetitionTime": 5000}, False),
        ({"SeriesDescription": "ADC"}, False),
        ({"SeriesDescription": "t2_dixon_tra_W", "EchoTime": 90, "RepetitionTime": 4000}, False),
        ({"SeriesDescription": "T2* GRE", "EchoTime": 20, "RepetitionTime": 700}, False),
        ({"SeriesDescription": "Pelvis", "EchoTime": 5, "RepetitionTime": 200}, False),
        ({"SeriesDescription": "Pelvis"}, None),
    ],
)
def test_t2_heuristic(header, expected):
    assert detect_t2(_header(**header)) is expected


def _info(uid, modality, is_t2=None, localizer=False):
    from CervixAutoSegLib.dicom_series import SeriesInfo

    return SeriesInfo(uid, modality, f"desc {uid}", 3, 3, 8, 8, is_t2, "HFS", "1", [], is_localizer=localizer)


def test_choose_series_rules():
    ct, t2, t1, scout, dose = (_info("ct", "CT"), _info("t2", "MR", True), _info("t1", "MR", False),
                               _info("scout", "CT", localizer=True), _info("dose", "RTDOSE"))
    assert choose_series([ct, scout, dose]).series_instance_uid == "ct"
    three_plane = dataclasses.replace(_info("pilot", "CT"), parallel=False)
    assert choose_series([three_plane, ct]).series_instance_uid == "ct"
    assert choose_series([t2, t1]).series_instance_uid == "t2"
    assert choose_series([ct, t2], preferred="MR").series_instance_uid == "t2"
    assert choose_series([ct, t2], modality="ct").series_instance_uid == "ct"
    assert choose_series([ct, t2, t1], series_uid="t1").series_instance_uid == "t1"
    with pytest.raises(InputError, match="--series"):
        choose_series([ct, t2])
    with pytest.raises(InputError, match="unsupported modality RTDOSE"):
        choose_series([dose])
    with pytest.raises(InputError, match="unsupported modality RTDOSE"):
        choose_series([ct, dose], series_uid="dose")
    with pytest.raises(InputError, match="not found"):
        choose_series([ct], series_uid="9.9")


# ------------------------------------------------------------ pydicom's own files
def test_pydicom_dicomdir_tests_find_every_image_series():
    infos = {info.series_instance_uid: info for info in find_series(DICOMDIR_TESTS)}
    modalities = sorted(info.modality for info in infos.values())
    assert modalities.count("CT") == 3 and modalities.count("MR") == 7
    ct = [info for info in infos.values() if info.description.startswith("SmartScore")]
    assert len(ct) == 1 and ct[0].n_slices == 5 and ct[0].patient_position == "FFS"
    assert ct[0].slice_spacing == pytest.approx(2.5) and ct[0].parallel
    pilots = [info for info in infos.values() if info.description == "T/S/C RF FAST PILOT"]
    assert pilots and all(not info.parallel and info.orientation_label == "mixed planes" for info in pilots)


def test_pydicom_feet_first_ct_series_loads_sorted_along_normal():
    info = next(i for i in find_series(DICOMDIR_TESTS) if i.description.startswith("SmartScore"))
    volume = read_dicom_series(DICOMDIR_TESTS, series_uid=info.series_instance_uid)
    assert volume.shape == (5, 16, 16) and volume.modality == "CT"
    assert volume.spacing[2] == pytest.approx(2.5)
    along = np.asarray(volume.meta["slice_positions"]) @ volume.slice_normal
    assert np.all(np.diff(along) > 0)
    # Each k-slice holds the pixels of the file whose IPP the meta says it has.
    for k, file in enumerate(volume.meta["files"]):
        ds = pydicom.dcmread(file)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], volume.meta["slice_positions"][k])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[k], hu)


def test_pydicom_multi_plane_mr_series_is_rejected_as_not_parallel():
    pilots = [i for i in find_series(DICOMDIR_TESTS) if i.description == "T/S/C RF FAST PILOT"]
    assert pilots
    for info in pilots:
        with pytest.raises(InputError, match="slices are not parallel"):
            read_dicom_series(DICOMDIR_TESTS, series_uid=info.series_instance_uid)


def test_pydicom_single_files_load_as_one_slice_volumes():
    ct = read_dicom_series(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ct.shape == (1, 128, 128) and ct.meta["single_slice"] is True
    assert ct.spacing[2] == pytest.approx(float(ds.SliceThickness))
    np.testing.assert_allclose(ct.origin, [float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_array_equal(ct.array[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    mr = read_dicom_series(get_testdata_file("MR_small.dcm"))
    assert mr.shape == (1, 64, 64) and mr.modality == "MR"


def test_rounded_positions_of_an_oblique_series_stay_an_orthogonal_grid(tmp_path):
    """IPPs rounded to 0.1 mm (as some scanners write them) are not a gantry tilt."""
    volume = make_volume((6, 8, 8), spacing_xyz=(0.9, 0.9, 5.0), direction=rotation(17, -9, 4))
    exact = volume.index_to_physical(np.column_stack([np.zeros(6), np.zeros(6), np.arange(6)]))
    positions = np.round(exact, 1)
    step = (positions[-1] - positions[0]) / 5
    assert np.linalg.norm(np.cross(step, volume.slice_normal)) > 1e-4 * 5.0  # rounding does bend the step
    write(volume, tmp_path, slice_positions=positions)
    loaded = read_dicom_series(tmp_path)
    assert loaded.meta["gantry_tilt"] is False and loaded.is_orthogonal
    np.testing.assert_allclose(loaded.direction[:, :2], volume.direction[:, :2], atol=1e-9)
    np.testing.assert_allclose(loaded.direction[:, 2], volume.slice_normal, atol=1e-9)
    assert 0 < loaded.meta["slice_spacing_nonuniform"] < 0.2
    np.testing.assert_array_equal(loaded.array, volume.array)


def test_one_degree_tilt_is_still_detected(tmp_path):
    volume = make_volume((20, 8, 8), spacing_xyz=(0.9, 0.9, 3.0))
    step = np.array([0.0, 3.0 * np.tan(np.deg2rad(1.0)), 3.0])
    write(volume, tmp_path, slice_positions=np.asarray(volume.origin) + np.arange(20)[:, None] * step)
    loaded = read_dicom_series(tmp_path)
    assert loaded.meta["gantry_tilt"] is True
    np.testing.assert_allclose(loaded.direction[:, 2], step / np.linalg.norm(step), atol=1e-9)


def test_duplicate_copies_of_a_series_count_once(tmp_path):
    import shutil

    volume = make_volume((4, 6, 6))
    write(volume, tmp_path / "export1")
    shutil.copytree(tmp_path / "export1", tmp_path / "export2")
    infos = find_series(tmp_path)
    assert len(infos) == 1 and infos[0].n_files == 4
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, volume.array)


def test_multi_frame_image_is_refused_clearly(tmp_path):
    def two_frames(ds):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2  # complete: a frame count without the frames is a damaged file

    paths = write(make_volume((2, 6, 6)), tmp_path)
    edit_files(paths, two_frames)
    with pytest.raises(InputError, match="multi-frame"):
        read_dicom_series(tmp_path)


def test_implicit_vr_series_reads_the_same(tmp_path):
    volume = make_volume((4, 6, 10), direction=direction_for("HFP"))
    paths = write(volume, tmp_path, patient_position="HFP")
    edit_files(paths, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian))
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    specific_character_set_explicit = b"\x08\x00\x05\x00CS"  # tag (0008,0005) followed by its VR
    assert specific_character_set_explicit not in paths[0].read_bytes()
    loaded = read_dicom_series(tmp_path)
    assert loaded.same_grid(volume, tolerance=1e-6)
    np.testing.assert_array_equal(loaded.array, volume.array)


def test_scout_and_structure_set_next_to_the_ct_do_not_confuse_the_choice(tmp_path):
    axial = make_volume((4, 8, 8))
    write(axial, tmp_path / "ct", series_description="Pelvis")
    scout_paths = write(make_volume((1, 8, 8), seed=3), tmp_path / "scout", series_description="Topogram")
    edit_files(scout_paths, lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    infos = find_series(tmp_path)
    assert sorted(info.is_localizer for info in infos) == [False, True]
    loaded = read_dicom_series(tmp_path)
    assert loaded.meta["series_description"] == "Pelvis"
    np.testing.assert_array_equal(loaded.array, axial.array)


def test_files_without_part10_preamble_are_read(tmp_path):
    """Older exports write the bare dataset (no preamble, no file meta)."""
    volume = make_volume((3, 6, 8), direction=direction_for("FFS"))
    paths = write(volume, tmp_path, patient_position="FFS")
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[128:132] != b"DICM"
    loaded = read_dicom_series(tmp_path)
    assert loaded.same_grid(volume, tolerance=1e-6)
    np.testing.assert_array_equal(loaded.array, volume.array)


@pytest.mark.parametrize("which", [0, -1], ids=["first", "last"])
def test_file_that_lost_only_its_preamble_is_read_as_its_slice(tmp_path, which):
    """A copy that dropped the 128-byte preamble and "DICM" starts with its file meta group; pydicom
    reads it.  Today it was "not DICOM" and skipped: the first or last slice vanished with exit 0."""
    volume = make_volume((4, 6, 8))
    paths = write(volume, tmp_path / "ct")
    ordered = sorted(paths, key=lambda path: float(pydicom.dcmread(path).ImagePositionPatient[2]))
    data = ordered[which].read_bytes()
    assert data[128:132] == b"DICM"
    ordered[which].write_bytes(data[132:])
    loaded = read_dicom_series(tmp_path / "ct")
    assert loaded.same_grid(volume, tolerance=1e-6) and str(ordered[which]) in loaded.meta["files"]
    np.testing.assert_array_equal(loaded.array, volume.array)


def test_file_meta_alone_without_preamble_is_named_as_damaged(tmp_path):
    """Only the file meta group of a slice survived: named, not skipped."""
    paths = write(make_volume((4, 6, 8)), tmp_path / "ct")
    data = paths[1].read_bytes()
    meta_length = 12 + int.from_bytes(data[140:144], "little")  # (0002,0000) element + the group it counts
    paths[1].write_bytes(data[132:132 + meta_length])
    with pytest.raises(InputError, match=f"damaged DICOM file {paths[1]}"):
        read_dicom_series(tmp_path / "ct")


KNOWN_REFUSALS = ("unsupported modality", "slices are not parallel", "missing slices")


def test_every_pydicom_dicomdir_series_loads_or_is_refused_with_a_known_reason():
    outcomes = {}
    for info in find_series(DICOMDIR_TESTS):
        try:
            volume = read_dicom_series(DICOMDIR_TESTS, series_uid=info.series_instance_uid)
        except InputError as error:
            message = str(error)
            assert "\n" not in message and any(reason in message for reason in KNOWN_REFUSALS), message
            outcomes[info.description] = message.split(":")[0]
        else:
            assert volume.shape[0] == info.n_slices and volume.shape[1:] == (info.rows, info.columns)
            outcomes[info.description] = "loaded"
    assert outcomes["SmartScore - Gated 0.5 sec"] == "loaded"
    assert outcomes["FAST LOCALIZER"] == "loaded"
    assert outcomes["Routine Brain"] == "missing slices"  # 4 files: two pairs 202 mm apart
    assert outcomes["Cervical LAT"].startswith("unsupported modality CR")
    assert outcomes["ANGIO Projected from   C"] == "slices are not parallel"


def test_rle_compressed_series_reads_the_same(tmp_path):
    """PACS exports are often compressed; RLE Lossless decodes with pydicom alone."""
    volume = make_volume((3, 10, 12), direction=direction_for("HFP"))
    paths = write(volume, tmp_path, patient_position="HFP")
    edit_files(paths, lambda ds: ds.compress(pydicom.uid.RLELossless))
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    loaded = read_dicom_series(tmp_path)
    assert loaded.same_grid(volume, tolerance=1e-6)
    np.testing.assert_array_equal(loaded.array, volume.array)


def _dicom_pixel_position(path, row: int, column: int) -> np.ndarray:
    """LPS of pixel (row, column) of one file by the DICOM PS3.3 C.7.6.2.1.1 equation."""
    ds = pydicom.dcmread(path)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return ipp + column * column_spacing * iop[:3] + row * row_spacing * iop[3:]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_bright_voxel_position_matches_the_dicom_equation(tmp_path, layout):
    volume = make_volume((5, 14, 22), spacing_xyz=(0.6, 1.3, 4.0), direction=LAYOUTS[layout])
    array = np.zeros(volume.shape, np.int16)
    array[3, 11, 2] = 1000
    paths = write(volume.with_array(array), tmp_path, shuffle_seed=8)
    def hu(path):
        ds = pydicom.dcmread(path)
        return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)

    (bright,) = [path for path in paths if hu(path).max() == 1000]
    expected = _dicom_pixel_position(bright, row=11, column=2)
    loaded = read_dicom_series(tmp_path)
    k, j, i = np.argwhere(loaded.array == 1000)[0]
    np.testing.assert_allclose(loaded.index_to_physical([i, j, k]), expected, atol=1e-6)


def test_rescale_is_applied_per_slice(tmp_path):
    volume = make_volume((4, 6, 6))
    paths = write(volume, tmp_path)
    edit_files(paths[2:3], lambda ds: setattr(ds, "RescaleIntercept", "-1000"))
    loaded = read_dicom_series(tmp_path)
    assert loaded.array.dtype == np.int16
    expected = volume.array.astype(np.int32)
    expected[2] += 24
    np.testing.assert_array_equal(loaded.array, expected)


def test_a_file_removed_between_its_header_and_its_pixels_is_named_in_one_line(tmp_path, monkeypatch):
    """Pixels are read from the header dataset (deferred): a file gone by then is named, not a decoder error."""
    import numpy as np

    from CervixAutoSegLib import dicom_series
    from CervixAutoSegLib.dicom_writer import write_dicom_series
    from CervixAutoSegLib.errors import InputError
    from CervixAutoSegLib.volume import Volume

    # 256 x 256 x 2 bytes: more than the scan reads before deferring the pixel data
    volume = Volume(array=np.full((4, 256, 256), 40, np.int16), spacing=np.array([1.0, 1.0, 3.0]), origin=np.zeros(3),
                    direction=np.eye(3), modality="CT")
    write_dicom_series(volume, tmp_path / "ct", modality="CT")
    real_pixels, removed = dicom_series._pixels, []

    def remove_then_read(path, ds=None):
        if not removed:
            path.unlink()
            removed.append(path)
        return real_pixels(path, ds)

    monkeypatch.setattr(dicom_series, "_pixels", remove_then_read)
    with pytest.raises(InputError, match="changed or disappeared") as caught:
        dicom_series.read_dicom_series(tmp_path / "ct")
    assert removed[0].name in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("stored_type", "stored", "intercepts"), [
    (np.uint16, [0, 40_000, 33_000, 1_000], [-8_000, -7_300, -10_000]),  # above 32767: wraps in 16 bits
    (np.int16, [-2_000, 0, 30_000, 100], [-1_024, 0, 3]),
    (np.uint8, [0, 255, 128, 1], [-1_024, 0, 5]),
    (np.int32, [-2_000, 0, 30_000, 100], [-1_024, 0, 3]),
    (np.uint32, [0, 40_000, 33_000, 1_000], [-8_000, -7_300, -10_000]),
])
def test_integer_rescale_to_int16_is_exact_for_every_stored_type(stored_type, stored, intercepts):
    """Whenever every rescaled value fits int16 the result is int16, computed in 16-bit arithmetic
    for 16-bit stored values (in their own memory: no second volume), and must equal the 64-bit sum."""
    from CervixAutoSegLib.dicom_series import _to_output_values

    stored = np.array([np.reshape(stored, (2, 2))] * 3, stored_type)
    intercepts = np.array(intercepts, np.float64)
    expected = stored.astype(np.int64) + intercepts.astype(np.int64)[:, None, None]
    values = _to_output_values(stored, np.ones(3), intercepts)
    assert values.dtype == np.int16
    assert np.shares_memory(values, stored) == (stored.dtype.itemsize == 2)
    np.testing.assert_array_equal(values, expected)


def test_a_series_read_at_once_parses_each_file_once_and_reads_the_same(tmp_path, monkeypatch):
    """read_dicom_series reuses the scan's headers (each file parsed once, then its pixels read);
    the volume equals the one read by parsing every file again, and a plain scan (a series
    listing, say in Slicer) keeps no header."""
    from CervixAutoSegLib import dicom_series

    volume = make_volume((6, 24, 30), spacing_xyz=(0.8, 0.8, 2.5), direction=direction_for("FFP"))
    write(volume, tmp_path, patient_position="FFP", shuffle_seed=3)
    [listed] = dicom_series.scan_series(tmp_path).series
    assert listed.headers is None
    reread = dicom_series.read_series_files(listed)  # the earlier way: every header parsed again

    parsed = []
    original = dicom_series._read_header
    monkeypatch.setattr(dicom_series, "_read_header", lambda path: parsed.append(path) or original(path))
    loaded = read_dicom_series(tmp_path)
    assert sorted(parsed) == sorted(listed.files) and len(parsed) == volume.shape[0]
    np.testing.assert_array_equal(loaded.array, volume.array)
    assert_same_image_in_lps(reread, loaded)
    assert loaded.meta == reread.meta
