"""RTSTRUCT writer: valid DICOM, right references and identity, coded ROIs, safe output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from rtstruct_oracle import assert_dciodvfy_clean, semantic_problems, write_series

from CervixAutoSegLib.dicom_series import read_dicom_series
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.rtstruct import build_rtstruct_dataset, write_rtstruct
from CervixAutoSegLib.rtstruct.contours import keyhole, mask_polygons
from CervixAutoSegLib.decimal_strings import coordinates_ds_bytes, ds_bytes, format_ds, format_ds_values
from CervixAutoSegLib.rtstruct.uids import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    MR_IMAGE_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
)
from CervixAutoSegLib.ct.family import CT_STRUCTURES
from CervixAutoSegLib.mr.family import MR_STRUCTURES
from CervixAutoSegLib.volume import Volume

ROWS, COLUMNS, SLICES = 24, 30, 5


@pytest.fixture
def ct_series(tmp_path):
    positions = np.array([[-250.0, -250.0, -100.0 + 2.5 * k] for k in range(SLICES)])
    folder = tmp_path / "ct"
    write_series(folder, ROWS, COLUMNS, positions, pixel_spacing=(0.9765625, 0.9765625), shuffle_seed=1)
    return folder, read_dicom_series(folder)


@pytest.fixture
def mr_series(tmp_path):
    positions = np.array([[-120.0, -90.0, 4.0 * k] for k in range(SLICES)])
    folder = tmp_path / "mr"
    write_series(folder, ROWS, COLUMNS, positions, modality="MR", pixel_spacing=(0.5, 0.5))
    return folder, read_dicom_series(folder)


def _ct_labels(reference: Volume) -> Volume:
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[1:4, 3:10, 3:12] = 1
    labels[2, 14:20, 4:9] = 2
    labels[0:5, 12:22, 15:27] = 4
    return reference.with_array(labels)


def test_ct_rtstruct_is_valid_and_references_its_series(ct_series, tmp_path):
    folder, reference = ct_series
    path = write_rtstruct(tmp_path / "out" / "rs.dcm", _ct_labels(reference), reference, CT_STRUCTURES,
                          model_name="ResAU-Net", model_version="1.2.3")
    assert_dciodvfy_clean(path)
    assert semantic_problems(path, folder) == []

    rs = pydicom.dcmread(path)
    image = pydicom.dcmread(reference.meta["files"][0])
    assert rs.file_meta.TransferSyntaxUID == IMPLICIT_VR_LITTLE_ENDIAN
    assert rs.file_meta.MediaStorageSOPClassUID == rs.SOPClassUID == RT_STRUCTURE_SET_STORAGE
    assert rs.file_meta.MediaStorageSOPInstanceUID == rs.SOPInstanceUID
    assert rs.Modality == "RTSTRUCT"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyID", "AccessionNumber", "SpecificCharacterSet"):
        assert rs.data_element(keyword).value == image.data_element(keyword).value, keyword
    assert rs.FrameOfReferenceUID == image.FrameOfReferenceUID
    assert rs.SeriesInstanceUID != image.SeriesInstanceUID
    assert rs.SOPInstanceUID not in reference.meta["sop_instance_uids"]
    assert rs.ApprovalStatus == "UNAPPROVED"

    frame = rs.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == image.FrameOfReferenceUID
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == image.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == reference.meta["sop_instance_uids"]

    for roi in rs.ROIContourSequence:
        for contour in getattr(roi, "ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert not np.allclose(points[0], points[-1]), "CLOSED_PLANAR must not repeat the first point"
            assert np.all(np.linalg.norm(np.diff(points, axis=0), axis=1) > 0), "duplicate consecutive points"


def test_rois_are_named_typed_coded_and_attributed_to_the_model(ct_series, tmp_path):
    _, reference = ct_series
    path = write_rtstruct(tmp_path / "rs.dcm", _ct_labels(reference), reference, CT_STRUCTURES,
                          model_name="ResAU-Net", model_version="1.2.3")
    rs = pydicom.dcmread(path)
    rois = {int(r.ROINumber): r for r in rs.StructureSetROISequence}
    observations = {int(o.ReferencedROINumber): o for o in rs.RTROIObservationsSequence}
    colours = {int(c.ReferencedROINumber): c for c in rs.ROIContourSequence}
    assert sorted(rois) == [s.value for s in CT_STRUCTURES]
    for structure in CT_STRUCTURES:
        roi, observation = rois[structure.value], observations[structure.value]
        assert roi.ROIName == structure.name
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        assert "ResAU-Net" in roi.ROIGenerationDescription and "1.2.3" in roi.ROIGenerationDescription
        algorithm = roi.ROIDerivationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("ResAU-Net", "1.2.3")
        assert observation.RTROIInterpretedType == structure.interpreted_type
        code = observation.RTROIIdentificationCodeSequence[0]
        assert (code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning) == tuple(structure.type)
        assert [int(c) for c in colours[structure.value].ROIDisplayColor] == list(structure.color)
    # Label 3 is absent: its ROI is listed but has no contours, as planning systems expect.
    assert "ContourSequence" not in colours[3]


def test_mr_contours_reference_mr_image_storage(mr_series, tmp_path):
    folder, reference = mr_series
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[1:4, 4:15, 5:20] = 1
    labels[2, 7:10, 8:12] = 2
    path = write_rtstruct(tmp_path / "rs.dcm", reference.with_array(labels), reference, MR_STRUCTURES,
                          model_name="PocketNet", model_version="0.1", containment={1: (1, 2)})
    assert_dciodvfy_clean(path)
    assert semantic_problems(path, folder) == []
    rs = pydicom.dcmread(path)
    classes = {str(c.ContourImageSequence[0].ReferencedSOPClassUID)
               for roi in rs.ROIContourSequence for c in roi.ContourSequence}
    series = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert classes == {MR_IMAGE_STORAGE}
    assert {str(i.ReferencedSOPClassUID) for i in series.ContourImageSequence} == {MR_IMAGE_STORAGE}


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 1e-14, -1e-7, 123.456789012345, -1234.5678901234, 99999.99999999, -987654321.123456789,
     3.999999999999, 1e20, -2.5e-300],
)
def test_decimal_strings_fit_sixteen_characters_and_keep_the_value(value):
    text = format_ds(value)
    assert len(text) <= 16
    assert abs(float(text) - value) <= max(1e-9 * abs(value), 1e-300)
    batch = format_ds_values([value])[0]
    assert len(batch) <= 16
    assert abs(float(batch) - value) <= max(1e-9 * abs(value), 1e-6)


def test_decimal_strings_refuse_non_finite_values():
    with pytest.raises(ValueError):
        format_ds_values([1.0, float("nan")])
    with pytest.raises(ValueError):
        coordinates_ds_bytes(np.array([[1.0, 2.0, np.inf]]))


@pytest.mark.parametrize("scale", [1.0, 1e-7, 1e5, 1e14, 1e16, 1e20])
def test_contour_data_formatted_in_one_go_is_the_value_by_value_formatting(scale):
    """Odd and even lengths, -0.0, values that round to zero, and magnitudes on both sides of the
    one-call limit (beyond it, the careful per-value path)."""
    rng = np.random.default_rng(int(np.log10(scale)) + 20)
    points = (rng.standard_normal((37, 3)) * scale).round(rng.integers(0, 12))
    points[0] = [-0.0, 4e-7, -6e-7]
    for count in (37, 36, 1, 0):
        want = ds_bytes(format_ds_values(points[:count]))
        got = coordinates_ds_bytes(points[:count])
        assert got == want and len(got) % 2 == 0


def test_single_voxel_becomes_a_diamond_around_its_centre():
    mask = np.zeros((5, 6), dtype=bool)
    mask[2, 3] = True
    (polygon,) = mask_polygons(mask)
    assert sorted(map(tuple, polygon)) == [(1.5, 3.0), (2.0, 2.5), (2.0, 3.5), (2.5, 3.0)]


def test_holes_are_separate_polygons_or_keyholed_into_their_outer():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:11, 1:11] = True
    mask[3:9, 3:9] = False
    mask[5:7, 5:7] = True  # island in the hole
    polygons = mask_polygons(mask)
    assert len(polygons) == 3
    joined = keyhole(polygons)
    assert len(joined) == 2  # outer+hole joined, island separate
    assert sum(len(p) for p in joined) == sum(len(p) for p in polygons) + 2


def test_straight_edges_keep_only_their_corners_worth_of_points():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 8:30] = True
    (polygon,) = mask_polygons(mask)
    assert len(polygon) == 8  # the four corners, each cut by marching squares into two points


def test_labels_off_the_image_grid_are_refused(ct_series, tmp_path):
    _, reference = ct_series
    labels = _ct_labels(reference)
    shifted = dataclasses.replace(labels, origin=labels.origin + [0.01, 0, 0])
    with pytest.raises(InputError, match="not on the image grid"):
        write_rtstruct(tmp_path / "rs.dcm", shifted, reference, CT_STRUCTURES, model_name="m", model_version="1")


def test_a_reference_without_dicom_identity_is_refused(ct_series, tmp_path):
    _, reference = ct_series
    plain = dataclasses.replace(reference, meta={})
    with pytest.raises(InputError, match="DICOM"):
        build_rtstruct_dataset(_ct_labels(plain), plain, CT_STRUCTURES, model_name="m", model_version="1")


def test_failed_write_leaves_the_existing_file_untouched(ct_series, tmp_path, monkeypatch):
    from CervixAutoSegLib.rtstruct import writer

    _, reference = ct_series
    target = tmp_path / "rs.dcm"
    target.write_bytes(b"previous export")

    def crash_half_way(dataset, path):
        path.write_bytes(b"half an RTSTRUCT")
        raise OSError("disk full")

    monkeypatch.setattr(writer, "save_implicit_little_endian", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_rtstruct(target, _ct_labels(reference), reference, CT_STRUCTURES, model_name="m", model_version="1")
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "rs.dcm"]


# ------------------------------------------------------------------ export-rtstruct command


def _save_labels(volume: Volume, path):
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(path))
    return path


def test_export_command_writes_a_valid_rtstruct_with_labels_json(ct_series, tmp_path, capsys):
    from CervixAutoSegLib.cli import main
    from CervixAutoSegLib.structures import write_labels_json

    folder, reference = ct_series
    labels_path = _save_labels(_ct_labels(reference), tmp_path / "seg" / "labels.nii.gz")
    write_labels_json(labels_path.parent / "labels.json", "ct-resaunet-test", CT_STRUCTURES)
    out = tmp_path / "export" / "rs.dcm"
    assert main(["export-rtstruct", "--dicom", str(folder), "--labels", str(labels_path), "--out", str(out)]) == 0
    assert_dciodvfy_clean(out)
    assert semantic_problems(out, folder) == []
    rs = pydicom.dcmread(out)
    assert [r.ROIName for r in rs.StructureSetROISequence] == [s.name for s in CT_STRUCTURES]
    assert rs.StructureSetROISequence[0].ROIDerivationAlgorithmIdentificationSequence[0].AlgorithmName == (
        "ct-resaunet-test")


def test_export_command_applies_mr_organ_containment_without_labels_json(mr_series, tmp_path):
    from CervixAutoSegLib.cli import main
    from CervixAutoSegLib.rtstruct import read_rtstruct_masks

    folder, reference = mr_series
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[1:4, 4:15, 5:20] = 1
    labels[2, 7:10, 8:12] = 2
    labels_path = _save_labels(reference.with_array(labels), tmp_path / "labels.nrrd")
    out = tmp_path / "rs.dcm"
    assert main(["export-rtstruct", "--dicom", str(folder), "--labels", str(labels_path), "--out", str(out)]) == 0
    masks = read_rtstruct_masks(out, reference)
    assert np.array_equal(masks["Uterus_Cx_Vagina"], labels >= 1)
    assert np.array_equal(masks["GTVp"], labels == 2)


def test_export_command_refuses_labels_off_the_grid_in_one_line(ct_series, tmp_path, capsys):
    from CervixAutoSegLib.cli import main

    folder, reference = ct_series
    shifted = dataclasses.replace(_ct_labels(reference), origin=reference.origin + [0, 0.5, 0])
    labels_path = _save_labels(shifted, tmp_path / "labels.nii.gz")
    out = tmp_path / "rs.dcm"
    code = main(["export-rtstruct", "--dicom", str(folder), "--labels", str(labels_path), "--out", str(out)])
    error = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert len(error.strip().splitlines()) == 1 and "not on the same voxel grid" in error and "Volume(" not in error
    code = main(["export-rtstruct", "--dicom", str(folder), "--labels", str(tmp_path / "missing.nii.gz"),
                 "--out", str(out)])
    assert code != 0 and "does not exist" in capsys.readouterr().err


def test_dciodvfy_has_no_warnings_either(ct_series, tmp_path):
    import subprocess

    _, reference = ct_series
    path = write_rtstruct(tmp_path / "rs.dcm", _ct_labels(reference), reference, CT_STRUCTURES,
                          model_name="ResAU-Net", model_version="1")
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (report.stdout + report.stderr).splitlines()
    assert [line for line in lines if line.startswith(("Warning", "Error"))] == []


def test_export_command_on_a_tilted_series_needs_nrrd_labels(tmp_path, capsys):
    from CervixAutoSegLib.cli import main

    tilt = np.deg2rad(12.0)
    positions = np.array([[-100.0, -80.0, 5.0 * k] for k in range(SLICES)])
    folder = tmp_path / "tilted"
    write_series(folder, ROWS, COLUMNS, positions, column_direction=(0.0, np.cos(tilt), np.sin(tilt)))
    reference = read_dicom_series(folder)
    assert not reference.is_orthogonal
    labels = _ct_labels(reference)
    out = tmp_path / "rs.dcm"

    nifti = _save_labels(labels, tmp_path / "labels.nii.gz")
    code = main(["export-rtstruct", "--dicom", str(folder), "--labels", str(nifti), "--out", str(out)])
    assert code != 0 and "gantry tilt" in capsys.readouterr().err and not out.exists()

    nrrd = _save_labels(labels, tmp_path / "labels.nrrd")
    assert main(["export-rtstruct", "--dicom", str(folder), "--labels", str(nrrd), "--out", str(out)]) == 0
    assert_dciodvfy_clean(out)
    assert semantic_problems(out, folder) == []


@pytest.mark.parametrize("join", [False, True], ids=["holes", "keyhole"])
def test_polygons_of_random_masks_rasterise_back_exactly(join):
    """Many holes per region, islands in holes, diagonal contacts: both polygon forms are exact."""
    from matplotlib.path import Path as PolygonPath
    from scipy import ndimage

    rng = np.random.default_rng(2024)
    rows, columns = 31, 43
    centres = np.stack(np.mgrid[0:rows, 0:columns], axis=-1).reshape(-1, 2)
    for trial in range(12):
        mask = ndimage.gaussian_filter(rng.standard_normal((rows, columns)), 1.0 + trial % 3 * 0.5) > 0.05
        polygons = mask_polygons(mask)
        if join:
            polygons = keyhole(polygons)
        filled = np.zeros(rows * columns, dtype=bool)
        for polygon in polygons:
            filled ^= PolygonPath(polygon).contains_points(centres)
        assert np.array_equal(filled.reshape(rows, columns), mask), f"trial {trial}"


def test_grid_check_bounds_the_misplacement_in_millimetres(ct_series):
    from CervixAutoSegLib.rtstruct.writer import grid_offset_mm

    _, reference = ct_series
    assert grid_offset_mm(reference, reference) == 0.0
    shifted = dataclasses.replace(reference, origin=reference.origin + [0.0, 0.0005, 0.0])
    assert grid_offset_mm(shifted, reference) == pytest.approx(0.0005)
    # A direction error of 1e-4 looks tiny as a number but moves the far corner of a
    # 30-pixel row by ~3e-3 mm: more than the 1e-3 mm tolerance.
    tilted = dataclasses.replace(reference, direction=reference.direction + [[0, 0, 0], [1e-4, 0, 0], [0, 0, 0]])
    assert grid_offset_mm(tilted, reference) > 1e-3
    assert grid_offset_mm(dataclasses.replace(reference, array=reference.array[1:]), reference) == float("inf")


def test_export_command_refuses_a_probability_map_as_labels(ct_series, tmp_path, capsys):
    from CervixAutoSegLib.cli import main

    folder, reference = ct_series
    probabilities = reference.with_array(np.full(reference.shape, 0.7, dtype=np.float32))
    labels_path = _save_labels(probabilities, tmp_path / "probabilities.nii.gz")
    out = tmp_path / "rs.dcm"
    code = main(["export-rtstruct", "--dicom", str(folder), "--labels", str(labels_path), "--out", str(out)])
    assert code != 0 and "non-integer" in capsys.readouterr().err and not out.exists()


def test_a_series_of_bare_datasets_without_part10_preamble_gets_its_rtstruct(ct_series, tmp_path):
    """Older exports write the bare dataset (no preamble, no file meta): the series reader takes
    them, so the writer, which copies patient and study data from the first file, must too."""
    folder, _ = ct_series
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    reference = read_dicom_series(folder)
    path = write_rtstruct(tmp_path / "rs.dcm", _ct_labels(reference), reference, CT_STRUCTURES,
                          model_name="m", model_version="1")
    written = pydicom.dcmread(path)
    assert written.StudyInstanceUID == pydicom.dcmread(reference.meta["files"][0], force=True).StudyInstanceUID
    assert_dciodvfy_clean(path)


def test_a_grid_mismatch_is_one_line_naming_both_grids(ct_series, tmp_path):
    _, reference = ct_series
    labels = _ct_labels(reference)
    shifted = dataclasses.replace(labels, origin=labels.origin + [5.0, 0, 0])
    with pytest.raises(InputError) as caught:
        write_rtstruct(tmp_path / "rs.dcm", shifted, reference, CT_STRUCTURES, model_name="m", model_version="1")
    message = str(caught.value)
    assert "\n" not in message and "labels: " in message and "image: " in message and "Volume(" not in message


def _skimage_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The oracle: skimage's marching squares at 0.5 on the zero-padded slice, "low" connectivity,
    vertices on the straight line through their neighbours dropped (cross product, with a tolerance)."""
    from skimage.measure import find_contours

    def drop_collinear(polygon: np.ndarray) -> np.ndarray:
        incoming = polygon - np.roll(polygon, 1, axis=0)
        outgoing = np.roll(polygon, -1, axis=0) - polygon
        return polygon[np.abs(incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]) > 1e-9]

    padded = np.pad(mask, 1).astype(np.float32)
    polygons = [drop_collinear(contour[:-1]) - 1.0 for contour in find_contours(padded, 0.5, fully_connected="low")]
    return [polygon for polygon in polygons if len(polygon) >= 3]


def _as_cycle(polygon: np.ndarray) -> tuple:
    """A polygon's vertices (doubled, exact) as a cycle starting at its smallest vertex: equal for the
    same polygon traced from another start, different for the other orientation."""
    vertices = [tuple(vertex) for vertex in np.rint(2 * polygon).astype(int).tolist()]
    start = vertices.index(min(vertices))
    return tuple(vertices[start:] + vertices[:start])


@pytest.mark.parametrize("seed", range(4))
def test_the_vectorised_tracer_gives_skimages_polygons_for_every_slice(seed):
    """stack_polygons traces a whole stack at once; each slice gets exactly the polygons of
    skimage's find_contours (same vertices, same orientation, only the starting vertex may differ),
    also where pixels touch only diagonally, on empty slices and at the crop's edge."""
    from scipy import ndimage

    from CervixAutoSegLib.rtstruct.contours import stack_polygons

    rng = np.random.default_rng(seed)
    for trial in range(40):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 35)), int(rng.integers(1, 35)))
        if trial % 4 == 0:
            stack = rng.random(shape) < 0.45  # many diagonal contacts
        else:
            stack = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 1.0 + trial % 3 * 0.5, 1.2)) \
                > rng.uniform(-0.4, 0.6)
        if trial % 5 == 0:
            stack[0] = False
        traced = stack_polygons(stack)
        assert len(traced) == shape[0]
        for k in range(shape[0]):
            assert sorted(map(_as_cycle, traced[k])) == sorted(map(_as_cycle, _skimage_polygons(stack[k]))), \
                f"trial {trial} slice {k}"
            assert [_as_cycle(p) for p in mask_polygons(stack[k])] == [_as_cycle(p) for p in traced[k]]
