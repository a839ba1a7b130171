"""Contours to review, from any source, as boolean masks on the image's own grid.

Sources (``review start --segmentation``):

* a ``segment`` output folder (``labels.nii.gz`` + ``labels.json``, ``report.json`` flags) — AI;
* a Slicer segmentation ``.seg.nrrd`` (ours or Slicer's; a grid cropped to the segments is placed
  back on the image grid);
* a label map (NIfTI/NRRD/MetaImage) with ``labels.json`` beside it, else the catalogue of the
  image's modality names its values;
* a DICOM RTSTRUCT (``.dcm``), e.g. a clinic's manual contours, rasterised onto the DICOM image.

Each set has a *role*, ``ai`` or ``manual``: given as ``ai=PATH`` / ``manual=PATH``, else
recognised (a ``segment`` folder, or an RTSTRUCT/label map written by CervixAutoSeg, is AI; an
RTSTRUCT from another system is manual), else by position (first AI, second manual).

Masks are (z, y, x) on the image grid; the MR organ mask includes the tumour (the label map
paints the tumour over the organ; :data:`~CervixAutoSegLib.evaluation.NESTED_STRUCTURES`).
Structure names are matched to the TG-263 catalogue (case-insensitive, paper names and common
synonyms), so AI and manual contours of one structure pair up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..structures import Structure, structures_from_json
from ..volume import Volume
from .flags import REPORT_FILE, SliceFlag, read_report_flags
from .model import AI, MANUAL, SOURCES

log = logging.getLogger(__name__)

SEGMENT_FOLDER, SEG_NRRD, LABEL_MAP, RTSTRUCT = "segment-folder", "seg.nrrd", "label-map", "rtstruct"
LABELS_JSON = "labels.json"
SEGMENT_OUTPUTS = ("labels.nii.gz", "segmentation.seg.nrrd", "rtstruct.dcm")
"""What a ``segment`` output folder offers, preferred first."""
OUR_MANUFACTURER = "CervixAutoSeg"
"""Manufacturer of the RTSTRUCTs this product writes (rtstruct.writer.MANUFACTURER)."""
FALLBACK_COLOR = (128, 174, 128)
GRID_TOLERANCE_MM = 1e-3


@dataclasses.dataclass(frozen=True)
class Contour:
    """One structure of one source: catalogue name, colour (RGB 0-255), mask on the image grid."""

    name: str
    color: tuple[int, int, int]
    mask: np.ndarray


@dataclasses.dataclass(frozen=True)
class ContourSet:
    """The contours of one source."""

    role: str
    kind: str
    path: Path
    contours: tuple[Contour, ...]
    flags: tuple[SliceFlag, ...] = ()


def parse_source_argument(text: str) -> tuple[str | None, Path]:
    """``"manual=contours.dcm"`` → ("manual", path); a plain path → (None, path)."""
    for role in SOURCES:
        if text.startswith(f"{role}="):
            return role, Path(text[len(role) + 1:])
    return None, Path(text)


def load_sources(arguments: Sequence[str], image: Volume, catalogue: Sequence[Structure]) -> list[ContourSet]:
    """Every ``--segmentation`` argument as a ContourSet with its role (see the module docstring)."""
    if not 1 <= len(arguments) <= len(SOURCES):
        raise InputError(f"give one or two segmentations (AI and manual), got {len(arguments)}")
    loaded = []
    for text in arguments:
        role, path = parse_source_argument(text)
        contour_set, recognised = load_contour_set(path, image, catalogue)
        loaded.append((role or recognised, contour_set))
    roles = _assign_roles([role for role, _ in loaded])
    return [dataclasses.replace(contour_set, role=role) for role, (_, contour_set) in zip(roles, loaded)]


def _assign_roles(roles: list[str | None]) -> list[str]:
    """Fill unknown roles: the one left over, else by position; two sets must differ."""
    if len(roles) == 1:
        return [roles[0] or AI]
    first, second = roles
    if first is None and second is None:
        first, second = AI, MANUAL
    first = first or (MANUAL if second == AI else AI)
    second = second or (MANUAL if first == AI else AI)
    if first == second:
        raise InputError(f"both segmentations are {first}: mark them ai=PATH and manual=PATH")
    return [first, second]


def load_contour_set(path: Path, image: Volume, catalogue: Sequence[Structure]) -> tuple[ContourSet, str | None]:
    """The contours at ``path`` on ``image``'s grid, and the role recognised from the file (or None)."""
    if not path.exists():
        raise InputError(f"segmentation {path} does not exist")
    if path.is_dir():
        return _segment_folder(path, image, catalogue), AI
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        return _seg_nrrd(path, image, catalogue), _role_beside(path)
    if name.endswith(".dcm"):
        return _rtstruct(path, image, catalogue)
    from ..evaluation import LABEL_IMAGE_SUFFIXES

    if name.endswith(LABEL_IMAGE_SUFFIXES):
        return _label_map(path, image, catalogue), _role_beside(path)
    raise InputError(f"{path}: not a segmentation this review reads (a segment output folder, .seg.nrrd, "
                     "label map or RTSTRUCT .dcm)")


def _role_beside(path: Path) -> str | None:
    """AI when the file sits in a ``segment`` output folder (report.json beside it), else unknown."""
    return AI if (path.parent / REPORT_FILE).is_file() else None


def _segment_folder(folder: Path, image: Volume, catalogue: Sequence[Structure]) -> ContourSet:
    for name in SEGMENT_OUTPUTS:
        candidate = folder / name
        if candidate.is_file():
            contour_set, _ = load_contour_set(candidate, image, catalogue)
            flags = tuple(read_report_flags(folder / REPORT_FILE))
            return dataclasses.replace(contour_set, kind=SEGMENT_FOLDER, path=folder, flags=flags)
    raise InputError(f"{folder} is not a segment output folder: it has none of {', '.join(SEGMENT_OUTPUTS)}")


# ------------------------------------------------------------------ readers
def _label_map(path: Path, image: Volume, catalogue: Sequence[Structure]) -> ContourSet:
    from ..evaluation import label_values, load_label_volume

    labels = on_image_grid(load_label_volume(path), image, path)
    structures = _structures_beside(path) or tuple(catalogue)
    array = np.asarray(labels.array)
    contours = []
    for structure in structures:
        mask = np.isin(array, label_values(structure, structures))
        contours.append(Contour(structure.name, tuple(structure.color), mask))  # type: ignore[arg-type]
    known = {s.value for s in structures}
    for value in sorted(set(np.unique(array).tolist()) - known - {0}):
        log.warning("%s: label value %d is not in its structure list; reviewed as 'label %d'", path, value, value)
        contours.append(Contour(f"label {value}", FALLBACK_COLOR, array == value))
    return ContourSet(role="", kind=LABEL_MAP, path=path, contours=tuple(contours))


def _structures_beside(path: Path) -> tuple[Structure, ...]:
    labels_json = path.parent / LABELS_JSON
    if not labels_json.is_file():
        return ()
    try:
        return structures_from_json(json.loads(labels_json.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{labels_json} is not a valid labels.json: {error}") from None


def _seg_nrrd(path: Path, image: Volume, catalogue: Sequence[Structure]) -> ContourSet:
    from ..segfile import read_segmentation_nrrd

    segmentation = read_segmentation_nrrd(path)
    contours = []
    for segment in segmentation.segments:
        mask = on_image_grid(segmentation.grid.with_array(segment.mask.astype(np.uint8)), image, path).array > 0
        name = canonical_name(segment.name, catalogue)
        color = tuple(int(round(255 * c)) for c in segment.color)
        contours.append(Contour(name, color, mask))  # type: ignore[arg-type]
    return ContourSet(role="", kind=SEG_NRRD, path=path, contours=tuple(contours))


def _rtstruct(path: Path, image: Volume, catalogue: Sequence[Structure]) -> tuple[ContourSet, str | None]:
    import pydicom

    from ..rtstruct import read_rtstruct_masks

    if image.meta.get("source") != "dicom":
        raise InputError(f"{path} is an RTSTRUCT: give the DICOM image series it was drawn on as --image")
    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    colours = _roi_colours(header)
    contours = []
    for roi_name, mask in read_rtstruct_masks(path, image).items():
        name = canonical_name(roi_name, catalogue)
        contours.append(Contour(name, colours.get(roi_name) or _catalogue_colour(name, catalogue), mask))
    role = AI if str(header.get("Manufacturer", "")) == OUR_MANUFACTURER else MANUAL
    return ContourSet(role="", kind=RTSTRUCT, path=path, contours=tuple(contours)), role


def _roi_colours(header) -> dict[str, tuple[int, int, int]]:
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in header.get("StructureSetROISequence", [])}
    colours = {}
    for roi in header.get("ROIContourSequence", []):
        colour = roi.get("ROIDisplayColor")
        if colour is not None and len(colour) == 3 and int(roi.ReferencedROINumber) in names:
            colours[names[int(roi.ReferencedROINumber)]] = tuple(int(c) for c in colour)
    return colours  # type: ignore[return-value]


# ------------------------------------------------------------------ names and grids
def canonical_name(name: str, catalogue: Sequence[Structure]) -> str:
    """The catalogue's TG-263 name for ``name`` (its own name, paper name or a common synonym), else ``name``."""
    from ..rtstruct.reader import SYNONYMS

    wanted = " ".join(name.strip().lower().split())
    for structure in catalogue:
        spellings = {structure.name.lower(), structure.paper_name.lower()}
        spellings |= set(SYNONYMS.get(structure.name.lower().replace("_", ""), ()))
        spellings |= set(SYNONYMS.get(structure.name.lower(), ()))
        if wanted in spellings or wanted.replace(" ", "_") in spellings:
            return structure.name
    return name.strip()


def _catalogue_colour(name: str, catalogue: Sequence[Structure]) -> tuple[int, int, int]:
    for structure in catalogue:
        if structure.name == name:
            return tuple(structure.color)  # type: ignore[return-value]
    return FALLBACK_COLOR


def on_image_grid(labels: Volume, image: Volume, path: Path) -> Volume:
    """``labels`` on ``image``'s grid: as is, pasted (an axis-aligned crop of it) or resampled (warned)."""
    if labels.same_grid(image, tolerance=GRID_TOLERANCE_MM):
        return labels
    pasted = _paste_crop(labels, image)
    if pasted is not None:
        return pasted
    from ..evaluation import resample_nearest

    log.warning("%s is not on the image grid; resampled onto it (nearest neighbour)", path)
    return resample_nearest(labels, image)


def _paste_crop(crop: Volume, image: Volume) -> Volume | None:
    """``crop`` placed into an empty array of ``image``'s grid when it is a sub-grid of it (Slicer's
    cropped ``.seg.nrrd``), else None."""
    if not (np.allclose(crop.spacing, image.spacing, atol=GRID_TOLERANCE_MM)
            and np.allclose(crop.direction, image.direction, atol=1e-6)):
        return None
    start = image.physical_to_index(crop.origin)
    offset = np.round(start).astype(int)
    if not np.allclose(start, offset, atol=1e-3):
        return None
    i0, j0, k0 = offset
    nz, ny, nx = crop.shape
    full = np.zeros(image.shape, dtype=np.asarray(crop.array).dtype)
    target = (slice(max(k0, 0), k0 + nz), slice(max(j0, 0), j0 + ny), slice(max(i0, 0), i0 + nx))
    source = tuple(slice(t.start - o, t.stop - o) for t, o in zip(target, (k0, j0, i0)))
    region = full[target]
    region[...] = np.asarray(crop.array)[tuple(slice(s.start, s.start + n) for s, n in zip(source, region.shape))]
    return image.with_array(full, meta=dict(crop.meta))
