"""Label map on a DICOM image grid → DICOM RT Structure Set (RTSTRUCT).

Built on pydicom and working with pydicom 2.4 (bundled by Slicer) and 3.x.  The object
references the image series it was drawn on (same Study and Frame of Reference, every
image listed, every contour pointing at its own image with that image's SOP Class),
names ROIs by TG-263, types them ORGAN/CTV/GTV, codes them, and marks them AUTOMATIC
with the model that drew them.  Every Decimal String is formatted here, ≤ 16 characters.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import GridMismatchError, InputError
from ..structures import GTV, ORGAN, Code, Structure
from ..volume import Volume
from . import uids
from .contours import keyhole as join_holes
from .contours import stack_polygons
from ..decimal_strings import coordinates_ds_bytes
from .planes import ImagePlanes, image_planes

log = logging.getLogger(__name__)

GRID_TOLERANCE_MM = 1e-3
"""Labels must lie on the image grid to within this distance."""

MANUFACTURER = "CervixAutoSeg"
STRUCTURE_SET_LABEL = "CervixAutoSeg"
RTSTRUCT_SERIES_NUMBER = 9001
"""Series Number of the structure set: high, so viewers list it after the image series."""

_CONTOUR_DATA_TAG = 0x30060050

# Attributes copied from the images (Patient, General Study and Patient Study modules).
_COPIED_FROM_IMAGES = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientWeight", "PatientSize", "OtherPatientIDs",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
)
# Type 2 attributes: must be present, may be empty.
_TYPE2_DEFAULTS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)
OPTIONAL_COPIED = ("IssuerOfPatientID", "PatientAge", "PatientWeight", "PatientSize", "OtherPatientIDs",
                   "StudyDescription")
"""Type 3 attributes of :data:`_COPIED_FROM_IMAGES`: an invalid value (a Patient's Weight of
"heavy", an age of "forty") is left out with a warning instead of stopping the whole run, since
the structure set is complete without it.  Type 1 and 2 values are copied as they are."""


def roi_masks(
    labels: np.ndarray, structures: Sequence[Structure], containment: Mapping[int, Sequence[int]] | None = None,
    boxes: Sequence[tuple | None] | None = None,
) -> dict[int, tuple[tuple[int, int, int], np.ndarray]]:
    """Each structure's boolean mask on the box around it: value → ((k0, j0, i0), mask).

    ``mask[k, j, i]`` is voxel ``(k0 + k, j0 + j, i0 + i)`` of ``labels`` (z, y, x); an absent
    structure gets an empty mask.  ``containment`` maps a structure value to every label value its
    ROI covers, e.g. ``{1: (1, 2)}``: the MR organ ROI includes the tumour painted over it.
    ``boxes``: :func:`~CervixAutoSegLib.cropping.label_boxes` of ``labels`` when the caller has them.
    """
    from ..cropping import label_boxes, region_box
    from ..postprocess import any_of

    containment = containment or {}
    boxes = label_boxes(labels) if boxes is None else boxes
    masks = {}
    for structure in structures:
        values = tuple(containment.get(structure.value, (structure.value,)))
        box = region_box(boxes, values, labels.shape, margin=0)
        masks[structure.value] = (((0, 0, 0), np.zeros((0, 1, 1), dtype=bool)) if box is None
                                  else (tuple(s.start for s in box), any_of(labels[box], values)))
    return masks


def organ_tumour_containment(structures: Sequence[Structure]) -> dict[int, tuple[int, ...]]:
    """Containment for organ-then-tumour models: every ORGAN ROI also covers every GTV label.

    For the MR structures this is ``{1: (1, 2)}``: the uterus+cervix+vagina ROI includes
    the tumour painted over it in the label map.
    """
    tumours = tuple(s.value for s in structures if s.interpreted_type == GTV)
    if not tumours:
        return {}
    return {s.value: (s.value, *tumours) for s in structures if s.interpreted_type == ORGAN}


def slice_contours(mask: np.ndarray, planes: ImagePlanes, *, keyhole: bool = False,
                   origin: tuple[int, int, int] = (0, 0, 0)) -> list[tuple[int, np.ndarray]]:
    """Closed planar contours of a 3D mask, each on its own image.

    Args:
        mask: boolean, shape (z, y, x) on the image grid, or on a box of it starting at ``origin``.
        planes: the images' geometry (:func:`~.planes.image_planes`).
        keyhole: join holes to their outer contour instead of listing them separately.
        origin: (k0, j0, i0), the image grid index of ``mask[0, 0, 0]``.

    Returns:
        ``(k, points)`` pairs: image index and contour points in LPS mm, shape (n, 3),
        first point not repeated.
    """
    contours = []
    k0, j0, i0 = origin
    shift = np.array([j0, i0], dtype=np.float64)
    for k, polygons in enumerate(stack_polygons(mask)):
        if keyhole:
            polygons = join_holes(polygons)
        contours.extend((k0 + k, planes.pixel_to_lps(k0 + k, polygon + shift)) for polygon in polygons)
    return contours


def build_rtstruct_dataset(
    labels: Volume,
    reference: Volume,
    structures: Sequence[Structure],
    *,
    model_name: str,
    model_version: str,
    containment: Mapping[int, Sequence[int]] | None = None,
    keyhole: bool = False,
    image_header=None,
    now: datetime.datetime | None = None,
    boxes: Sequence[tuple | None] | None = None,
):
    """The RT Structure Set as a ``pydicom.FileDataset`` (not yet written).

    Args:
        labels: label map, shape (z, y, x), on exactly ``reference``'s grid.
        reference: the image Volume read from the DICOM series (its ``meta`` carries
            the series identity: see :func:`~.planes.image_planes`).
        structures: one ROI per structure, in this order; empty ROIs are kept.
        model_name, model_version: identify the algorithm that drew the contours.
        containment: structure value → label values its ROI covers (see :func:`roi_masks`).
        keyhole: join holes to their outer contour (one polygon per region).
        image_header: a pydicom Dataset of one source image; read from
            ``reference.meta["files"][0]`` when omitted.
        now: creation time (defaults to the current local time).
        boxes: :func:`~CervixAutoSegLib.cropping.label_boxes` of ``labels`` when the caller has them.
    """
    from pydicom.uid import generate_uid

    _check_same_grid(labels, reference)
    values = [s.value for s in structures]
    if not values or len(set(values)) != len(values) or min(values) < 1:
        raise ValueError(f"structures need distinct positive label values (they become ROI numbers), got {values}")
    planes = image_planes(reference)
    header = image_header if image_header is not None else _read_image_header(reference)
    now = now or datetime.datetime.now()
    meta = reference.meta
    frame_of_reference = str(meta.get("frame_of_reference_uid") or header.get("FrameOfReferenceUID", ""))
    study_uid = str(meta.get("study_instance_uid") or header.get("StudyInstanceUID", ""))
    series_uid = str(meta.get("series_instance_uid") or header.get("SeriesInstanceUID", ""))
    if not (frame_of_reference and study_uid and series_uid):
        raise InputError("the image series lacks a Study, Series or Frame of Reference UID; cannot reference it")

    sop_instance_uid = generate_uid()
    dataset = _new_file_dataset(sop_instance_uid)
    files = meta.get("files") or []
    _copy_patient_and_study(dataset, header, Path(files[0]).name if files else "the image header",
                            meta.get("input_warnings") or ())
    dataset.StudyInstanceUID = study_uid
    _fill_series_and_equipment(dataset, generate_uid(), model_name, model_version, now)
    dataset.FrameOfReferenceUID = frame_of_reference
    dataset.PositionReferenceIndicator = header.get("PositionReferenceIndicator", "")
    _fill_structure_set(dataset, model_name, model_version, now)
    dataset.ReferencedFrameOfReferenceSequence = [
        _referenced_frame_of_reference(frame_of_reference, study_uid, series_uid, planes)
    ]
    masks = roi_masks(np.asarray(labels.array), structures, containment, boxes)
    algorithm = f"{model_name} {model_version}".strip()
    dataset.StructureSetROISequence = [
        _structure_set_roi(s, frame_of_reference, model_name, model_version, algorithm) for s in structures
    ]
    dataset.ROIContourSequence = [
        _roi_contour(s, slice_contours(masks[s.value][1], planes, keyhole=keyhole, origin=masks[s.value][0]), planes)
        for s in structures
    ]
    dataset.RTROIObservationsSequence = [_rt_roi_observation(s) for s in structures]
    dataset.ApprovalStatus = uids.APPROVAL_UNAPPROVED
    _mark_contour_data_raw(dataset)
    return dataset


def write_rtstruct(
    path: str | Path,
    labels: Volume,
    reference: Volume,
    structures: Sequence[Structure],
    *,
    model_name: str,
    model_version: str,
    containment: Mapping[int, Sequence[int]] | None = None,
    keyhole: bool = False,
    image_header=None,
    boxes: Sequence[tuple | None] | None = None,
) -> Path:
    """Write the RT Structure Set of ``labels`` for the series of ``reference``, atomically.

    See :func:`build_rtstruct_dataset` for the arguments.  Returns the written path.
    """
    dataset = build_rtstruct_dataset(
        labels, reference, structures, model_name=model_name, model_version=model_version,
        containment=containment, keyhole=keyhole, image_header=image_header, boxes=boxes,
    )
    path = Path(path)
    with atomic_path(path) as temporary:
        save_implicit_little_endian(dataset, temporary)
    log.info("wrote RTSTRUCT with %d ROIs to %s", len(structures), path)
    return path


def save_implicit_little_endian(dataset, path: str | Path) -> None:
    """Write a file dataset as Implicit VR Little Endian with its file meta (pydicom 2.4 and 3.x)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(str(path), dataset, implicit_vr=True, little_endian=True, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x inside older Slicer
        dataset.is_implicit_VR = True
        dataset.is_little_endian = True
        dataset.save_as(str(path), write_like_original=False)


# --------------------------------------------------------------------------- modules


def grid_offset_mm(a: Volume, b: Volume) -> float:
    """Largest distance (mm) between the same corner voxel centre of two grids; inf if shapes differ.

    Comparing positions (not spacing and direction numbers) bounds the misplacement
    anywhere in the volume, since grid positions are affine in the voxel index.
    """
    if a.shape != b.shape:
        return float("inf")
    nz, ny, nx = a.shape
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], dtype=np.float64)
    return float(np.max(np.linalg.norm(a.index_to_physical(corners) - b.index_to_physical(corners), axis=1)))


def _check_same_grid(labels: Volume, reference: Volume) -> None:
    offset = grid_offset_mm(labels, reference)
    if offset > GRID_TOLERANCE_MM:
        where = "has another shape" if not np.isfinite(offset) else f"is off by up to {offset:.3g} mm"
        raise GridMismatchError.between(f"the label map is not on the image grid: it {where}",
                                        {"labels": labels, "image": reference}, "resample it onto the images first")


def read_source_header(reference: Volume):
    """The header of ``reference``'s first DICOM file, every attribute the structure set copies from
    it already converted here: a writer in another thread then neither converts nor touches the
    process-wide warning filters (which a conversion's ``catch_warnings`` would)."""
    header = _read_image_header(reference)
    invalid_optional_values(header)
    for keyword in _COPIED_FROM_IMAGES:
        if keyword in header and keyword not in OPTIONAL_COPIED:
            header.data_element(keyword)
    return header


def _read_image_header(reference: Volume):
    import pydicom

    from ..dicom_series import read_dataset

    files = reference.meta.get("files") or []
    if not files:
        raise InputError("the image Volume does not list its DICOM files; cannot copy patient and study data")
    try:  # as the series reader does: a raw dataset without the Part 10 preamble is accepted there too
        return read_dataset(Path(files[0]), stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"cannot read the source image {files[0]}: {error}") from None


def _new_file_dataset(sop_instance_uid: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = uids.RT_STRUCTURE_SET_STORAGE
    file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    file_meta.TransferSyntaxUID = uids.IMPLICIT_VR_LITTLE_ENDIAN
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset = FileDataset(None, {}, file_meta=file_meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = uids.RT_STRUCTURE_SET_STORAGE
    dataset.SOPInstanceUID = sop_instance_uid
    return dataset


def _optional_value_problem(header, keyword: str) -> str | None:
    """Why the Type 3 value ``keyword`` of ``header`` cannot be copied into a valid RTSTRUCT, or None.

    Checked with pydicom's own VR rules (characters, length, age format); a Decimal String must
    also hold finite numbers ("1e309" passes the character rules).
    """
    import warnings

    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import dictionary_VR
    from pydicom.tag import Tag

    element = header.get_item(keyword)
    raw = element.value
    shown = raw.decode("latin-1", "replace").strip() if isinstance(raw, bytes) else str(raw)
    vr = dictionary_VR(Tag(element.tag))
    label = f"{keyword} {Tag(element.tag)} holds {shown!r}"
    try:
        if isinstance(element, RawDataElement):
            with warnings.catch_warnings():  # pydicom warns about the value it converts; we say it in one line
                warnings.simplefilter("ignore")
                element = header[keyword]
        values = [v for v in (element.value if element.VM > 1 else [element.value]) if v not in (None, "")]
        if vr == "DS":
            return _decimal_string_problem(label, values)
        _validate_vr(vr, values)
    except (ValueError, TypeError, OverflowError) as error:
        reason = " ".join(str(error).split(" Please see")[0].split())  # pydicom appends a link to the standard
        return f"{label}, not a valid {vr} value ({reason})"
    return None


def _decimal_string_problem(label: str, values) -> str | None:
    """A Decimal String must hold finite numbers of at most 16 characters ("1e309" is all digits, yet inf)."""
    from ..decimal_strings import DS_MAX_LENGTH

    for value in values:
        text = str(getattr(value, "original_string", None) or value).strip()
        try:
            number = float(text)
        except ValueError:
            return f"{label}, not a number"
        if not np.isfinite(number):
            return f"{label}, not a finite number"
        if len(text) > DS_MAX_LENGTH:
            return f"{label}, longer than the {DS_MAX_LENGTH} characters a DICOM Decimal String holds"
    return None


def _validate_vr(vr: str, values) -> None:
    """ValueError when pydicom's rules for ``vr`` reject one of ``values`` (no-op on pydicom without them)."""
    try:
        from pydicom import config
        from pydicom.valuerep import validate_value
    except ImportError:  # pragma: no cover - old pydicom: nothing more to check
        return
    for value in values:
        validate_value(vr, value, config.RAISE)


def invalid_optional_values(header) -> list[str]:
    """One line per Type 3 value of ``header`` (an image header) that the writer will leave out."""
    problems = []
    for keyword in OPTIONAL_COPIED:
        if keyword in header:
            problem = _optional_value_problem(header, keyword)
            if problem:
                problems.append(problem)
    return problems


def _copy_patient_and_study(dataset, header, source: str = "the image header", reported: Sequence[str] = ()) -> None:
    """Copy the Patient and Study attributes; invalid optional ones are left out with a warning
    (an info line when the input checks reported it already, in ``reported``)."""
    for keyword in _COPIED_FROM_IMAGES:
        if keyword not in header:
            continue
        problem = _optional_value_problem(header, keyword) if keyword in OPTIONAL_COPIED else None
        if problem:
            line = f"{source}: {problem}; left out of the RTSTRUCT"
            log.log(logging.INFO if line in reported else logging.WARNING, "%s", line)
            continue
        setattr(dataset, keyword, header.data_element(keyword).value)
    for keyword in _TYPE2_DEFAULTS:
        if keyword not in dataset:
            setattr(dataset, keyword, "")


def _fill_series_and_equipment(dataset, series_uid: str, model_name: str, model_version: str, now) -> None:
    from .. import __version__

    dataset.InstanceCreationDate = now.strftime("%Y%m%d")
    dataset.InstanceCreationTime = now.strftime("%H%M%S")
    dataset.Modality = uids.RTSTRUCT_MODALITY
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = RTSTRUCT_SERIES_NUMBER
    dataset.SeriesDescription = _clip(f"Auto-contours {model_name} {model_version}", uids.LO_MAX_LENGTH)
    dataset.OperatorsName = ""
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = _clip(model_name or MANUFACTURER, uids.LO_MAX_LENGTH)
    dataset.SoftwareVersions = [_clip(f"CervixAutoSeg {__version__}", uids.LO_MAX_LENGTH),
                                _clip(f"{model_name} {model_version}", uids.LO_MAX_LENGTH)]


def _fill_structure_set(dataset, model_name: str, model_version: str, now) -> None:
    dataset.InstanceNumber = 1
    dataset.StructureSetLabel = STRUCTURE_SET_LABEL
    dataset.StructureSetName = _clip(f"{model_name} {model_version}".strip() or STRUCTURE_SET_LABEL, uids.LO_MAX_LENGTH)
    dataset.StructureSetDescription = "Automatic contours; not reviewed. Check before clinical use."
    dataset.StructureSetDate = now.strftime("%Y%m%d")
    dataset.StructureSetTime = now.strftime("%H%M%S")


def _referenced_frame_of_reference(frame_of_reference: str, study_uid: str, series_uid: str, planes: ImagePlanes):
    from pydicom.dataset import Dataset

    images = []
    for uid in planes.sop_instance_uids:
        image = Dataset()
        image.ReferencedSOPClassUID = planes.sop_class_uid
        image.ReferencedSOPInstanceUID = uid
        images.append(image)
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = uids.DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = study_uid
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = [study]
    return frame


def _structure_set_roi(structure: Structure, frame_of_reference: str, model_name: str, model_version: str,
                       algorithm: str):
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber = structure.value
    roi.ReferencedFrameOfReferenceUID = frame_of_reference
    roi.ROIName = structure.name
    roi.ROIDescription = _clip(structure.paper_name, uids.LO_MAX_LENGTH)
    roi.ROIGenerationAlgorithm = uids.ROI_GENERATION_AUTOMATIC
    roi.ROIGenerationDescription = _clip(algorithm, uids.LO_MAX_LENGTH)
    identification = Dataset()
    identification.AlgorithmFamilyCodeSequence = [_code_item(uids.SEGMENTATION_ALGORITHM_FAMILY)]
    identification.AlgorithmName = _clip(model_name or MANUFACTURER, uids.LO_MAX_LENGTH)
    identification.AlgorithmVersion = _clip(model_version or "unknown", uids.LO_MAX_LENGTH)
    roi.ROIDerivationAlgorithmIdentificationSequence = [identification]
    return roi


def _roi_contour(structure: Structure, contours: list[tuple[int, np.ndarray]], planes: ImagePlanes):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedROINumber = structure.value
    item.ROIDisplayColor = list(structure.color)
    if contours:
        item.ContourSequence = [_contour(number, k, points, planes) for number, (k, points) in enumerate(contours, 1)]
    return item


def _contour(number: int, k: int, points: np.ndarray, planes: ImagePlanes):
    """One Contour Sequence item, its elements pre-encoded (implicit VR little endian).

    A structure set holds hundreds of these; pydicom's per-attribute checks of values that are
    all ours or already checked (the image UIDs are validated once, in the Referenced Frame of
    Reference Sequence) cost more than the rest of the item.  Contour Data is formatted once as
    bytes for the same reason, and so that no value can exceed 16 characters.
    """
    from pydicom.dataset import Dataset

    image = Dataset()
    image.add(_raw("ReferencedSOPClassUID", "UI", planes.sop_class_uid))
    image.add(_raw("ReferencedSOPInstanceUID", "UI", planes.sop_instance_uids[k]))
    contour = Dataset()
    contour.ContourImageSequence = [image]
    contour.add(_raw("ContourGeometricType", "CS", uids.CLOSED_PLANAR))
    contour.add(_raw("NumberOfContourPoints", "IS", str(len(points))))
    contour.add(_raw("ContourNumber", "IS", str(number)))
    contour.add(_raw_bytes(_CONTOUR_DATA_TAG, "DS", coordinates_ds_bytes(points)))
    return contour


def _raw(keyword: str, vr: str, text: str):
    """``text`` as the pre-encoded element ``keyword``: ASCII, padded to even length as PS3.5 6.2 pads
    ``vr`` (UI with a NUL byte, the string VRs with a space)."""
    from pydicom.tag import Tag

    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return _raw_bytes(Tag(keyword), vr, data)


def _raw_bytes(tag: int, vr: str, data: bytes):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    return RawDataElement(Tag(tag), vr, len(data), data, 0, True, True)


def _mark_contour_data_raw(dataset) -> None:
    """Let pydicom write the pre-encoded Contour Data bytes as they are.

    pydicom re-parses raw elements of a dataset whose "original" encoding or character
    set differs from the output; declaring each contour item (and its image reference) as
    already implicit little endian in its effective character set avoids that.  Output is identical either way.
    """
    for roi in dataset.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            for item in (contour, *contour.ContourImageSequence):
                charset = getattr(item, "_character_set", None)
                if charset is not None and hasattr(item, "set_original_encoding"):
                    item.set_original_encoding(True, True, charset)


def _rt_roi_observation(structure: Structure):
    from pydicom.dataset import Dataset

    observation = Dataset()
    observation.ObservationNumber = structure.value
    observation.ReferencedROINumber = structure.value
    observation.ROIObservationLabel = structure.name
    observation.RTROIInterpretedType = structure.interpreted_type
    observation.ROIInterpreter = ""
    observation.RTROIIdentificationCodeSequence = [_code_item(structure.type)]
    return observation


def _code_item(code: Code):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def _clip(text: str, limit: int) -> str:
    return text[:limit].strip()
