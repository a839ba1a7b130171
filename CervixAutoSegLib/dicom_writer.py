"""Write a :class:`~CervixAutoSegLib.volume.Volume` as a DICOM CT or MR image series.

One file per k-slice (array axis 0), Explicit VR Little Endian, CT Image Storage or
MR Image Storage, with the geometry a treatment-planning system reads:

* Image Position (Patient) of slice ``k`` = LPS centre of voxel ``(0, 0, k)``, i.e.
  ``origin + k * spacing[2] * direction[:, 2]`` (or ``slice_positions[k]`` when given,
  to make non-uniform or gantry-tilted test series).
* Image Orientation (Patient) = ``direction[:, 0]`` (along a row, increasing column
  index ``i``) then ``direction[:, 1]`` (down a column, increasing row index ``j``).
* Pixel Spacing = ``(row spacing, column spacing)`` = ``(spacing[1], spacing[0])`` —
  DICOM lists the spacing *between rows* first, the reverse of (x, y) order.

Used by the phantom generator, by tests that need odd real DICOM (feet-first, prone,
oblique, tilted, shuffled file names) and by anyone exporting a volume for a TPS.
Every file goes through :func:`~CervixAutoSegLib.atomic.atomic_path`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .decimal_strings import format_ds
from .errors import InputError
from .volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
"""SOP Class UID of the CT Image IOD."""
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
"""SOP Class UID of the MR Image IOD."""
SOP_CLASS_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLEMENTATION_VERSION_NAME = "CERVIXAUTOSEG"

PATIENT_POSITIONS = ("HFS", "HFP", "FFS", "FFP", "HFDR", "HFDL", "FFDR", "FFDL")
"""Defined terms of Patient Position (0018,5100)."""

CT_RESCALE_INTERCEPT = -1024.0
"""CT stores HU + 1024 as unsigned 16 bit, as most scanners do (air = 0)."""
UINT16_MAX = 65535
INT16_MIN, INT16_MAX = -32768, 32767


CT_WINDOW = (40.0, 400.0)
"""Default soft-tissue window (centre, width) in HU for CT."""

DEFAULT_PATIENT = {
    "PatientName": "CervixAutoSeg^Phantom",
    "PatientID": "CAS-PHANTOM",
    "PatientBirthDate": "",
    "PatientSex": "F",
}

DEFAULT_T2_TSE = {
    "ScanningSequence": ["SE"],
    "SequenceVariant": ["SK", "SP"],
    "ScanOptions": "",
    "MRAcquisitionType": "2D",
    "EchoTime": 100.0,
    "RepetitionTime": 4000.0,
    "EchoTrainLength": 16,
    "SequenceName": "*tse2d1_16",
    "MagneticFieldStrength": 1.5,
    "ImagedNucleus": "1H",
    "ProtocolName": "t2_tse_tra",
}
"""A typical axial T2-weighted turbo spin echo (Siemens-like names), the MR default."""


def _ds_list(values: Sequence[float]) -> list[str]:
    return [format_ds(v) for v in values]


def slice_positions_of(volume: Volume) -> np.ndarray:
    """LPS mm of voxel ``(0, 0, k)`` for every k, shape ``(nz, 3)``."""
    nz = volume.shape[0]
    ijk = np.zeros((nz, 3))
    ijk[:, 2] = np.arange(nz)
    return volume.index_to_physical(ijk)


def _stored_pixels(array: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """Choose the stored integer representation of ``array`` (z, y, x).

    Returns ``(stored, slope, intercept)`` with ``array ≈ stored * slope + intercept``.
    CT: HU + 1024 as uint16 when every value is an integer ≥ -1024 (exact); otherwise
    int16 with a slope chosen to span the range (quantised). MR: integers are stored as
    they are (uint16 or int16, exact); non-integer MR values are rounded.
    """
    values = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError("cannot write a DICOM series from an image with NaN or infinite voxels")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    integral = bool(np.all(values == np.round(values)))
    if modality == "CT":
        if integral and low >= CT_RESCALE_INTERCEPT and high - CT_RESCALE_INTERCEPT <= UINT16_MAX:
            return (values - CT_RESCALE_INTERCEPT).astype(np.uint16), 1.0, CT_RESCALE_INTERCEPT
        if integral and low >= INT16_MIN and high <= INT16_MAX:
            return values.astype(np.int16), 1.0, 0.0
        slope = max((high - low) / (UINT16_MAX - 1), np.finfo(np.float32).eps)
        stored = np.round((values - low) / slope) + INT16_MIN
        return stored.astype(np.int16), slope, low - INT16_MIN * slope
    rounded = np.round(values)
    if low >= 0 and high <= UINT16_MAX:
        return rounded.astype(np.uint16), 1.0, 0.0
    if low >= INT16_MIN and high <= INT16_MAX:
        return rounded.astype(np.int16), 1.0, 0.0
    raise InputError(f"MR intensities {low}..{high} do not fit in 16 bits")


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _file_names(count: int, file_names: Sequence[str] | None, rng: np.random.Generator | None) -> list[str]:
    if file_names is not None:
        names = [str(name) for name in file_names]
        if len(names) != count or len(set(names)) != count:
            raise InputError(f"need {count} distinct file names, got {len(names)} ({len(set(names))} distinct)")
        return names
    if rng is not None:
        # Random hex names: neither the name nor the directory order says where a slice is.
        return [f"{rng.integers(0, 2**63):016x}.dcm" for _ in range(count)]
    return [f"IMG{k + 1:05d}.dcm" for k in range(count)]


def _slice_gap(positions: np.ndarray, normal: np.ndarray, volume: Volume) -> float:
    """Distance (mm) between neighbouring slice planes, measured along the plane normal.

    It is shorter than the IPP step for a tilted gantry; with explicit ``positions`` it
    is their median step along the normal.
    """
    along = np.diff(positions @ normal)
    if along.size:
        return float(np.median(np.abs(along)))
    return abs(float(np.dot(volume.direction[:, 2], normal))) * float(volume.spacing[2])


def _check_keywords(attributes: Mapping[str, Any], what: str) -> None:
    """Refuse misspelt attribute names: pydicom would only warn and drop them."""
    from pydicom.datadict import tag_for_keyword

    unknown = sorted(keyword for keyword in attributes if tag_for_keyword(keyword) is None)
    if unknown:
        raise InputError(f"unknown DICOM keyword(s) in {what}: {', '.join(unknown)}")


def _common_dataset(
    modality: str,
    patient: Mapping[str, Any],
    study_instance_uid: str,
    series_instance_uid: str,
    frame_of_reference_uid: str,
    series_description: str,
    patient_position: str,
    now: datetime.datetime,
):
    """Attributes shared by every slice: patient, study, series, frame of reference, equipment."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASS_BY_MODALITY[modality]
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    _check_keywords(patient, "patient")
    for keyword, value in {**DEFAULT_PATIENT, **dict(patient)}.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = study_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "PELVIS"
    ds.PatientPosition = patient_position
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "CervixAutoSeg"
    ds.ManufacturerModelName = "CervixAutoSeg DICOM writer"
    ds.AcquisitionNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _add_mr_attributes(ds, mr_sequence: Mapping[str, Any], slice_gap: float) -> None:
    """MR Image module: sequence description + timing (type 1/2 attributes always present)."""
    attributes = {**DEFAULT_T2_TSE, **dict(mr_sequence)}
    _check_keywords(attributes, "mr_sequence")
    for keyword, value in attributes.items():
        if keyword in ("EchoTime", "RepetitionTime", "InversionTime", "MagneticFieldStrength", "FlipAngle"):
            value = format_ds(value) if value not in ("", None) else ""
        setattr(ds, keyword, value)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SpacingBetweenSlices = format_ds(slice_gap)


def _write_dataset(ds, path: Path) -> None:
    """Save ``ds`` as a DICOM Part 10 file, atomically (pydicom 2.4 and 3.x)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    with atomic_path(path, suffix=".dcm") as temporary:
        if int(pydicom.__version__.split(".")[0]) >= 3:
            pydicom.dcmwrite(temporary, ds, enforce_file_format=True)
        else:  # pragma: no cover - pydicom 2.4
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(temporary, ds, write_like_original=False)


def write_dicom_series(
    volume: Volume,
    out_dir: Path,
    *,
    modality: str = "CT",
    patient_position: str = "HFS",
    series_description: str = "",
    patient: dict | None = None,
    study_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_instance_uid: str | None = None,
    mr_sequence: dict | None = None,
    file_names: Sequence[str] | None = None,
    shuffle_seed: int | None = None,
    slice_positions: np.ndarray | None = None,
) -> list[Path]:
    """Write ``volume`` as one DICOM file per k-slice into ``out_dir``.

    Args:
        volume: image; ``array`` (z, y, x) is HU for CT, scanner units for MR.
        out_dir: created if missing; existing files with other names are left alone.
        modality: ``"CT"`` or ``"MR"``.
        patient_position: Patient Position (0018,5100), e.g. ``"HFS"``, ``"FFP"``. It is
            only a label: the geometry is entirely in ``volume`` (IPP/IOP).
        patient: overrides of PatientName, PatientID, ... (keyword → value).
        study_instance_uid, frame_of_reference_uid, series_instance_uid: new ones when None.
        mr_sequence: MR Image module attributes (keyword → value) overriding the
            default axial T2 TSE (:data:`DEFAULT_T2_TSE`), e.g. ``{"EchoTime": 12,
            "RepetitionTime": 600, "ProtocolName": "t1_tse_tra"}`` for a T1w series.
        file_names: one name per k-slice (array order); default ``IMG00001.dcm``....
        shuffle_seed: when given (and no ``file_names``), random hexadecimal file names
            and randomly permuted Instance Numbers, so neither carries slice order.
        slice_positions: (nz, 3) LPS mm Image Position (Patient) per k-slice overriding
            the volume geometry (for non-uniform or gantry-tilted test series).

    Returns:
        The written paths, in array (k) order.
    """
    modality = _checked_modality(modality, patient_position)
    nz, ny, nx = volume.shape
    positions = slice_positions_of(volume) if slice_positions is None else np.asarray(slice_positions, float)
    if positions.shape != (nz, 3):
        raise InputError(f"slice_positions must have shape ({nz}, 3), got {positions.shape}")

    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    names = _file_names(nz, file_names, rng)
    instance_numbers = np.arange(1, nz + 1) if rng is None else rng.permutation(nz) + 1
    stored, slope, intercept = _stored_pixels(volume.array, modality)

    row_direction, column_direction = volume.direction[:, 0], volume.direction[:, 1]
    normal = np.cross(row_direction, column_direction)
    normal /= np.linalg.norm(normal)
    slice_gap = _slice_gap(positions, normal, volume)

    study_instance_uid = study_instance_uid or _new_uid()
    series_instance_uid = series_instance_uid or _new_uid()
    frame_of_reference_uid = frame_of_reference_uid or _new_uid()
    template = _common_dataset(
        modality, patient or {}, study_instance_uid, series_instance_uid, frame_of_reference_uid,
        series_description, patient_position, datetime.datetime.now(),
    )
    template.Rows, template.Columns = ny, nx
    template.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    template.ImageOrientationPatient = _ds_list(list(row_direction) + list(column_direction))
    template.PixelSpacing = _ds_list([volume.spacing[1], volume.spacing[0]])
    template.SliceThickness = format_ds(slice_gap)
    if modality == "CT":
        _add_ct_attributes(template, slope, intercept)
    else:
        _add_mr_attributes(template, mr_sequence or {}, slice_gap)
        low, high = float(np.min(stored)), float(np.max(stored))
        template.WindowCenter = format_ds((low + high) / 2)
        template.WindowWidth = format_ds(max(high - low, 1.0))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_write_slice(template, stored[k], positions[k], normal, int(instance_numbers[k]), out_dir / names[k])
            for k in range(nz)]


def _checked_modality(modality: str, patient_position: str) -> str:
    """``modality`` upper-cased; InputError for one we cannot write or an unknown patient position."""
    modality = modality.upper()
    if modality not in SOP_CLASS_BY_MODALITY:
        raise InputError(f"can only write CT or MR image series, not {modality!r}")
    if patient_position not in PATIENT_POSITIONS:
        raise InputError(f"unknown patient position {patient_position!r}; use one of {', '.join(PATIENT_POSITIONS)}")
    return modality


def _add_ct_attributes(template, slope: float, intercept: float) -> None:
    template.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    template.RescaleIntercept = format_ds(intercept)
    template.RescaleSlope = format_ds(slope)
    template.RescaleType = "HU"
    template.KVP = "120"
    template.WindowCenter, template.WindowWidth = (format_ds(v) for v in CT_WINDOW)


def _write_slice(template, pixels: np.ndarray, position: np.ndarray, normal: np.ndarray, instance_number: int,
                 path: Path) -> Path:
    """One image of the series: the template with this slice's UID, position and pixels."""
    ds = template.copy()
    ds.SOPInstanceUID = _new_uid()
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = _ds_list(position)
    ds.SliceLocation = format_ds(float(np.dot(position, normal)))
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    _write_dataset(ds, path)
    return path
