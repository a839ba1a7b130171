"""RTSTRUCT reader on hand-built structure sets shaped like planning-system exports."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rtstruct_oracle import save_file, write_series

from CervixAutoSegLib.dicom_series import read_dicom_series
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.rtstruct import read_rtstruct, read_rtstruct_masks, roi_names
from CervixAutoSegLib.ct.family import CT_STRUCTURES

ROWS, COLUMNS, SLICES = 20, 26, 4
PIXEL_SPACING = (0.8, 1.25)  # (row, column) mm
SLICE_GAP = 3.0


@pytest.fixture
def series(tmp_path):
    """Feet-first series (x flipped) acquired head to feet: array order is not file or acquisition order."""
    positions = np.array([[200.0, -60.0, 30.0 - SLICE_GAP * k] for k in range(SLICES)])
    folder = tmp_path / "series"
    write_series(folder, ROWS, COLUMNS, positions, row_direction=(-1.0, 0, 0), pixel_spacing=PIXEL_SPACING,
                 patient_position="FFS", shuffle_seed=5)
    return read_dicom_series(folder)


def _to_lps(reference, k: int, pixels) -> np.ndarray:
    """(row, column) pixel coordinates on image k → LPS mm, written out from the DICOM definition."""
    pixels = np.asarray(pixels, dtype=np.float64)
    position = np.asarray(reference.meta["slice_positions"][k])
    row_direction, column_direction = reference.direction[:, 0], reference.direction[:, 1]
    return (position + np.outer(pixels[:, 1] * PIXEL_SPACING[1], row_direction)
            + np.outer(pixels[:, 0] * PIXEL_SPACING[0], column_direction))


def _box(r0, r1, c0, c1):
    """Pixel-edge rectangle enclosing pixel centres rows r0..r1-1, columns c0..c1-1 (clockwise)."""
    return [(r0 - 0.5, c0 - 0.5), (r0 - 0.5, c1 - 0.5), (r1 - 0.5, c1 - 0.5), (r1 - 0.5, c0 - 0.5)]


def _contour(reference, k, pixels, kind="CLOSED_PLANAR", offset_mm=0.0, reference_image=True):
    points = _to_lps(reference, k, pixels)
    normal = np.cross(reference.direction[:, 0], reference.direction[:, 1])
    points = points + offset_mm * normal
    item = Dataset()
    if reference_image:
        image = Dataset()
        image.ReferencedSOPClassUID = reference.meta["sop_class_uid"]
        image.ReferencedSOPInstanceUID = reference.meta["sop_instance_uids"][k]
        item.ContourImageSequence = [image]
    item.ContourGeometricType = kind
    item.NumberOfContourPoints = len(points)
    item.ContourData = [f"{v:.2f}" for v in points.reshape(-1)]  # TPS-style 0.01 mm precision
    return item


def _write_rtstruct(path, reference, rois: dict[str, list[Dataset]]):
    """A minimal but well-formed RTSTRUCT (Explicit VR, like many planning systems write)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.StructureSetLabel = "TPS"
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, contours) in enumerate(rois.items(), start=10):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = reference.meta["frame_of_reference_uid"]
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [255, 0, 0]
        if contours:
            item.ContourSequence = contours
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = "ORGAN"
        ds.RTROIObservationsSequence.append(observation)
    save_file(ds, path)
    return path


def test_planning_system_style_export_is_rasterised_per_roi(series, tmp_path, caplog):
    keyhole_ring = (
        # outer box rows 2..13, columns 2..13, with a hole rows 5..9, columns 5..9 joined by a cut
        [(1.5, 1.5), (1.5, 13.5), (13.5, 13.5), (13.5, 1.5), (4.5, 1.5), (4.5, 4.5), (9.5, 4.5), (9.5, 9.5),
         (4.5, 9.5), (4.5, 4.5), (4.5, 1.5)]
    )
    path = _write_rtstruct(tmp_path / "rs.dcm", series, {
        "BLADDER": [_contour(series, 1, _box(2, 6, 3, 9)), _contour(series, 1, _box(10, 15, 12, 20)),
                    _contour(series, 2, _box(2, 6, 3, 9), reference_image=False)],
        "Rectum": [_contour(series, 0, keyhole_ring),
                   _contour(series, 3, [(8.0, 8.0)], kind="POINT")],
        "CTVp": [],
        "Couch": [_contour(series, 2, _box(0, 3, 0, 3), offset_mm=SLICE_GAP / 2)],
    })
    with caplog.at_level(logging.WARNING):
        masks = read_rtstruct_masks(path, series)
    assert "image plane" in caplog.text and "Couch" in caplog.text

    bladder = np.zeros(series.shape, dtype=bool)
    bladder[1, 2:6, 3:9] = bladder[1, 10:15, 12:20] = bladder[2, 2:6, 3:9] = True
    rectum = np.zeros(series.shape, dtype=bool)
    rectum[0, 2:14, 2:14] = True
    rectum[0, 5:10, 5:10] = False
    assert np.array_equal(masks["BLADDER"], bladder)
    assert np.array_equal(masks["Rectum"], rectum)
    assert not masks["CTVp"].any() and not masks["Couch"].any()
    assert roi_names(path) == {10: "BLADDER", 11: "Rectum", 12: "CTVp", 13: "Couch"}

    labels = read_rtstruct(path, series, CT_STRUCTURES)
    assert labels.same_grid(series)
    assert labels.meta["labels"] == {"BLADDER": 1, "Rectum": 2, "CTVp": 4}
    assert np.array_equal(labels.array == 1, bladder) and np.array_equal(labels.array == 2, rectum)


def test_names_match_case_insensitively_with_a_few_synonyms(series, tmp_path, caplog):
    path = _write_rtstruct(tmp_path / "rs.dcm", series, {
        "Blase": [_contour(series, 0, _box(1, 4, 1, 4))],
        "GTV": [_contour(series, 1, _box(1, 4, 1, 4))],
        "Femur_L": [_contour(series, 2, _box(1, 4, 1, 4))],
    })
    with caplog.at_level(logging.WARNING):
        labels = read_rtstruct(path, series, {"bladder": 5, "GTVp": 7})
    assert labels.meta["labels"] == {"Blase": 5, "GTV": 7}
    assert "Femur_L" in caplog.text
    assert (labels.array[0, 1:4, 1:4] == 5).all() and (labels.array[1, 1:4, 1:4] == 7).all()
    assert not labels.array[2].any()
    by_order = read_rtstruct(path, series)
    assert by_order.meta["labels"] == {"Blase": 1, "GTV": 2, "Femur_L": 3}


def test_overlapping_rois_keep_both_masks_and_the_higher_value_wins_in_the_label_map(series, tmp_path):
    path = _write_rtstruct(tmp_path / "rs.dcm", series, {
        "Uterus_Cx_Vagina": [_contour(series, 1, _box(2, 12, 2, 12))],
        "GTVp": [_contour(series, 1, _box(4, 7, 4, 7))],
    })
    masks = read_rtstruct_masks(path, series)
    assert masks["Uterus_Cx_Vagina"].sum() == 100 and masks["GTVp"].sum() == 9
    labels = read_rtstruct(path, series, {"Uterus_Cx_Vagina": 1, "GTVp": 2}).array
    assert (labels == 2).sum() == 9 and (labels == 1).sum() == 91


def test_a_file_that_is_not_an_rtstruct_is_refused(series, tmp_path):
    with pytest.raises(InputError, match="not an RT Structure Set"):
        read_rtstruct(series.meta["files"][0], series)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match="cannot read RTSTRUCT"):
        read_rtstruct(broken, series)


def test_rois_sharing_a_name_stay_separate(series, tmp_path):
    path = _write_rtstruct(tmp_path / "rs.dcm", series, {"Bladder": [_contour(series, 1, _box(2, 6, 2, 6))]})
    rs = pydicom.dcmread(path)
    # A second ROI with the same name covering the same square must not cancel the first (even-odd is per ROI).
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 99, "Bladder"
    roi.ReferencedFrameOfReferenceUID = series.meta["frame_of_reference_uid"]
    rs.StructureSetROISequence.append(roi)
    contours = Dataset()
    contours.ReferencedROINumber = 99
    contours.ContourSequence = [_contour(series, 1, _box(2, 6, 2, 6))]
    rs.ROIContourSequence.append(contours)
    save_file(rs, path)
    masks = read_rtstruct_masks(path, series)
    assert sorted(masks) == ["Bladder (ROI 10)", "Bladder (ROI 99)"]
    assert masks["Bladder (ROI 10)"].sum() == masks["Bladder (ROI 99)"].sum() == 16
    labels = read_rtstruct(path, series, CT_STRUCTURES)
    assert labels.meta["labels"] == {"Bladder (ROI 10)": 1, "Bladder (ROI 99)": 1}
    assert (labels.array == 1).sum() == 16


def test_rtstruct_of_another_frame_of_reference_is_refused(series, tmp_path):
    path = _write_rtstruct(tmp_path / "rs.dcm", series, {"Bladder": [_contour(series, 1, _box(2, 6, 2, 6))]})
    rs = pydicom.dcmread(path)
    rs.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = generate_uid()
    save_file(rs, path)
    with pytest.raises(InputError, match="Frame of Reference"):
        read_rtstruct(path, series)
