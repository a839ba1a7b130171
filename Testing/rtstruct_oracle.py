"""Test-only helpers for the RTSTRUCT tests, independent of CervixAutoSegLib.rtstruct.

* :func:`write_series` writes a small CT/MR image series with pydicom, with any
  orientation, per-slice positions (tilt, non-uniform gaps) and shuffled file names.
* :func:`oracle_masks` rasterises an RTSTRUCT with a plain point-in-polygon test
  (matplotlib ``Path.contains_points`` on pixel centres), placing each contour on the
  image it references and projecting it with that image's own IPP/IOP/Pixel Spacing
  read fresh from the files.  It shares no code with the product's reader.
* :func:`assert_dciodvfy_clean` runs dicom3tools' validator and fails on any error.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from CervixAutoSegLib.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_CLASS = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}


def save_file(dataset: FileDataset, path: Path) -> None:
    """Save with the file meta its TransferSyntaxUID names, under pydicom 2.4 and 3.x alike."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        dataset.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.x (what older Slicer bundles)
        syntax = dataset.file_meta.TransferSyntaxUID
        dataset.is_implicit_VR, dataset.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
        dataset.save_as(path, write_like_original=False)


def write_series(
    folder: Path,
    rows: int,
    columns: int,
    positions: np.ndarray,
    *,
    row_direction=(1.0, 0.0, 0.0),
    column_direction=(0.0, 1.0, 0.0),
    pixel_spacing=(1.0, 1.0),
    modality: str = "CT",
    patient_position: str = "HFS",
    shuffle_seed: int | None = None,
) -> list[Path]:
    """Write one image per entry of ``positions`` (IPP, LPS mm), in that order of acquisition.

    ``pixel_spacing`` is DICOM order: (row spacing, column spacing) in mm.  File names
    are shuffled with ``shuffle_seed`` so that name order says nothing about position.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    names = [f"IM{n:04d}.dcm" for n in range(len(positions))]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(names)
    paths = []
    for index, (position, name) in enumerate(zip(positions, names)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = "Test^Pätient"
        ds.PatientID = "RT0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "S1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality = modality
        ds.PatientPosition = patient_position
        ds.SeriesNumber, ds.InstanceNumber = 3, index + 1
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_direction, *column_direction)]
        ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.zeros((rows, columns), dtype=np.uint16).tobytes()
        if modality == "CT":  # Type 1 in the CT Image module: the product's reader refuses a CT without them
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        path = folder / name
        save_file(ds, path)
        paths.append(path)
    return paths


def oracle_masks(rtstruct_path: Path, series_folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """ROI name → {SOP Instance UID → boolean (rows, columns) mask} by point-in-polygon.

    Each contour goes on the image its Contour Image Sequence references; its points are
    projected with that image's own geometry; contours of one image combine even-odd.
    """
    from matplotlib.path import Path as PolygonPath

    images = {}
    for file in series_folder.glob("*.dcm"):
        header = pydicom.dcmread(file, stop_before_pixels=True)
        images[str(header.SOPInstanceUID)] = header
    rtstruct = pydicom.dcmread(rtstruct_path)
    names = {int(r.ROINumber): str(r.ROIName) for r in rtstruct.StructureSetROISequence}
    result: dict[str, dict[str, np.ndarray]] = {name: {} for name in names.values()}
    for roi in rtstruct.ROIContourSequence:
        per_image = result[names[int(roi.ReferencedROINumber)]]
        for contour in getattr(roi, "ContourSequence", []):
            uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            image = images[uid]
            position = np.array([float(v) for v in image.ImagePositionPatient])
            orientation = np.array([float(v) for v in image.ImageOrientationPatient])
            row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
            points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3) - position
            column_index = points @ orientation[:3] / column_spacing
            row_index = points @ orientation[3:] / row_spacing
            rows, columns = int(image.Rows), int(image.Columns)
            grid_row, grid_column = np.mgrid[0:rows, 0:columns]
            centres = np.stack([grid_column.ravel(), grid_row.ravel()], axis=1)
            inside = PolygonPath(np.stack([column_index, row_index], axis=1)).contains_points(centres)
            previous = per_image.get(uid, np.zeros((rows, columns), dtype=bool))
            per_image[uid] = previous ^ inside.reshape(rows, columns)
    return result


def oracle_volume_mask(per_image: dict[str, np.ndarray], reference: Volume) -> np.ndarray:
    """Stack an :func:`oracle_masks` entry in the reference's slice order, shape (z, y, x)."""
    mask = np.zeros(reference.shape, dtype=bool)
    for k, uid in enumerate(reference.meta["sop_instance_uids"]):
        if uid in per_image:
            mask[k] = per_image[uid]
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines starting with "Error" in dciodvfy's report on ``path``."""
    executable = shutil.which("dciodvfy")
    assert executable, "dciodvfy (dicom3tools) is not on PATH"
    completed = subprocess.run([executable, str(path)], capture_output=True, text=True, check=False)
    report = (completed.stdout + completed.stderr).splitlines()
    return [line for line in report if line.startswith("Error")]


def assert_dciodvfy_clean(path: Path) -> None:
    """Fail with dciodvfy's error lines when the DICOM object at ``path`` is not valid."""
    errors = dciodvfy_errors(path)
    assert not errors, "dciodvfy errors:\n" + "\n".join(errors)


def semantic_problems(rtstruct_path: Path, series_folder: Path, plane_tolerance_mm: float = 1e-3) -> list[str]:
    """Consistency problems of an RTSTRUCT against its image series (empty list = fine).

    Checks: Number of Contour Points = len(Contour Data) / 3; every contour point on the
    plane of the image it references; every referenced image exists in the series with
    the SOP Class it really has; ROI numbers agree across the three ROI sequences; every
    DS value at most 16 characters.
    """
    images = {}
    for file in series_folder.glob("*.dcm"):
        header = pydicom.dcmread(file, stop_before_pixels=True)
        images[str(header.SOPInstanceUID)] = header
    rtstruct = pydicom.dcmread(rtstruct_path)
    problems = []

    def check_image_reference(item, where):
        uid = str(item.ReferencedSOPInstanceUID)
        if uid not in images:
            problems.append(f"{where}: references unknown image {uid}")
        elif str(item.ReferencedSOPClassUID) != str(images[uid].SOPClassUID):
            problems.append(f"{where}: SOP Class {item.ReferencedSOPClassUID} but image is {images[uid].SOPClassUID}")

    listed = set()
    for frame in rtstruct.ReferencedFrameOfReferenceSequence:
        for study in frame.RTReferencedStudySequence:
            for series in study.RTReferencedSeriesSequence:
                for item in series.ContourImageSequence:
                    check_image_reference(item, "Contour Image Sequence")
                    listed.add(str(item.ReferencedSOPInstanceUID))
    if listed != set(images):
        problems.append(f"Contour Image Sequence lists {len(listed)} of {len(images)} images")

    numbers = [sorted(int(r.ROINumber) for r in rtstruct.StructureSetROISequence),
               sorted(int(r.ReferencedROINumber) for r in rtstruct.ROIContourSequence),
               sorted(int(r.ReferencedROINumber) for r in rtstruct.RTROIObservationsSequence)]
    if not numbers[0] == numbers[1] == numbers[2]:
        problems.append(f"ROI numbers disagree: {numbers}")

    for roi in rtstruct.ROIContourSequence:
        for contour in getattr(roi, "ContourSequence", []):
            where = f"ROI {roi.ReferencedROINumber} contour {contour.get('ContourNumber')}"
            data = contour.ContourData
            if len(data) != 3 * int(contour.NumberOfContourPoints):
                problems.append(f"{where}: {len(data)} values for {contour.NumberOfContourPoints} points")
            image_item = contour.ContourImageSequence[0]
            check_image_reference(image_item, where)
            image = images.get(str(image_item.ReferencedSOPInstanceUID))
            if image is None:
                continue
            orientation = np.array([float(v) for v in image.ImageOrientationPatient])
            normal = np.cross(orientation[:3], orientation[3:])
            points = np.array([float(v) for v in data]).reshape(-1, 3)
            distance = np.abs((points - [float(v) for v in image.ImagePositionPatient]) @ normal).max()
            if distance > plane_tolerance_mm:
                problems.append(f"{where}: a point lies {distance:.2e} mm off its image plane")

    def check_ds(dataset):
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    check_ds(item)
            elif element.VR == "DS" and element.value is not None:
                values = element.value if element.VM > 1 else [element.value]
                for value in values:
                    text = getattr(value, "original_string", str(value))
                    if len(text) > 16:
                        problems.append(f"{element.keyword}: DS {text!r} longer than 16 characters")

    check_ds(rtstruct)
    return problems
