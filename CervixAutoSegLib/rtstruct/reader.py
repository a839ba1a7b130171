"""DICOM RT Structure Set → masks and label maps on a reference image grid.

Tolerant of what planning systems export: several contours per slice, keyholes, ROIs
without contours, POINT markers (ignored).  Each closed contour is assigned to the
image whose plane it lies on (by distance to each image's own plane, so tilted and
non-uniform series work) and filled even-odd with the other contours of that image.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..structures import Structure
from ..volume import Volume
from .planes import ImagePlanes, image_planes
from .uids import CLOSED_PLANAR, RT_STRUCTURE_SET_STORAGE

log = logging.getLogger(__name__)

_CONTOUR_DATA_TAG = 0x30060050

PLANE_TOLERANCE_FRACTION = 0.25
"""A contour belongs to an image when it lies within this fraction of the slice gap of its plane."""

PLANE_TOLERANCE_MM = 0.5
"""Plane tolerance for a single-image series (no slice gap to scale by)."""

SYNONYMS: dict[str, tuple[str, ...]] = {
    "bladder": ("blase", "urinary bladder", "bladder_o", "bladder o", "bladder-o", "vessie", "vejiga", "vesica"),
    "rectum": ("rektum", "rectum_o", "rectum o", "rectum-o", "rectal", "retto"),
    "ctvn": ("ctv-n", "ctv_n", "ctv n", "ctv nodal", "ctv nodes", "ctv_nodes", "ctv-nodes", "ctv_ln", "ctv-ln",
             "ctv ln", "ctvln", "ctv pelvic nodes", "ctv_pelvic_nodes", "ctvnodes", "ctvnodal"),
    "ctvp": ("ctv-uv", "ctv_uv", "ctv uv", "ctvuv", "ctv-p", "ctv_p", "ctv p", "ctv primary", "ctv_primary"),
    "uterus_cx_vagina": ("organ", "uterus+cervix", "uterus", "uterus_cervix_vagina", "uterus cervix vagina",
                         "uterus+cervix+vagina"),
    "gtvp": ("gtv", "gtv-p", "gtv_p", "gtv p", "gtv primary", "gtv_primary", "tumor", "tumour"),
}
"""A few common alternative spellings (lower case) of the project's TG-263 names."""


def roi_names(path: str | Path) -> dict[int, str]:
    """ROI Number → ROI Name of an RTSTRUCT file."""
    return _roi_names(_read(path))


def referenced_series(path: str | Path) -> set[str]:
    """Series Instance UIDs of the image series an RTSTRUCT file was drawn on."""
    return _referenced_series(_read(path))


def find_rtstructs(folder: str | Path, series_instance_uid: str | None = None) -> list[Path]:
    """RT Structure Set files under ``folder`` (recursive), sorted by path.

    With ``series_instance_uid``, only those that reference that image series — how a
    clinic's DICOM export (images + RTSTRUCT in one folder) is paired for training.
    Files that are not DICOM, or not RTSTRUCT, are skipped silently.
    """
    import pydicom

    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (OSError, pydicom.errors.InvalidDicomError, ValueError, EOFError):
            continue
        if str(header.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
            continue
        if series_instance_uid is None or series_instance_uid in referenced_series(path):
            found.append(path)
    return found


def read_rtstruct_masks(path, reference: Volume, rois: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """One boolean mask per ROI (name → mask, shape (z, y, x) of ``reference``).

    ROIs may overlap (e.g. an organ containing its tumour); ROIs without closed contours
    give empty masks; a name used by several ROIs gets `` (ROI n)`` appended.
    ``reference`` must come from the DICOM series the RTSTRUCT was drawn on (its
    ``meta`` carries the per-image geometry).

    Args:
        path: the RTSTRUCT file, or its pydicom Dataset already read (a large structure set
            takes seconds to parse: a caller that also needs its header reads it once).
        reference: image Volume of the referenced series.
        rois: only rasterise the ROIs of these (unique, see :func:`unique_roi_names`) names;
            None: all.  Filling a body outline or ring on every slice costs time for nothing.

    Raises:
        InputError: the RTSTRUCT is in another Frame of Reference than the images.
    """
    dataset = _read(path)
    _check_frame_of_reference(dataset, reference, getattr(dataset, "filename", None) or path)
    planes = image_planes(reference)
    names = _unique_names(_roi_names(dataset))
    wanted = None if rois is None else set(rois)
    masks = {number: np.zeros(reference.shape, dtype=bool) for number, name in names.items()
             if wanted is None or name in wanted}
    for roi in dataset.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        names.setdefault(number, f"ROI {number}")
        if wanted is not None and names[number] not in wanted:
            continue
        mask = masks.setdefault(number, np.zeros(reference.shape, dtype=bool))
        for contour in roi.get("ContourSequence", []):
            _add_contour(mask, contour, planes, names[number])
    return {names[number]: mask for number, mask in masks.items()}


def unique_roi_names(path) -> list[str]:
    """ROI names of an RTSTRUCT (file or Dataset) as :func:`read_rtstruct_masks` keys them, in ROI order."""
    return list(_unique_names(_roi_names(_read(path))).values())


def read_header(path: str | Path) -> Any:
    """The RTSTRUCT's pydicom Dataset (InputError when unreadable or not an RT Structure Set)."""
    return _read(path)


def read_rtstruct(
    path: str | Path,
    reference: Volume,
    names: Mapping[str, int] | Sequence[Structure] | None = None,
) -> Volume:
    """Label map of an RTSTRUCT on ``reference``'s grid.

    Args:
        path: the RTSTRUCT file.
        reference: image Volume of the referenced DICOM series.
        names: ROI name → label value (case-insensitive, a few synonyms accepted), or
            structures whose TG-263 names give the values.  ``None``: values 1, 2, ...
            in the order the ROIs are listed.

    Returns:
        uint8 label Volume on ``reference``'s grid.  Where ROIs overlap the higher label
        value wins (MR: tumour painted over organ).  ``meta["labels"]`` maps the ROI
        names found to their values; unmatched ROIs are skipped with a warning.
    """
    masks = read_rtstruct_masks(path, reference)
    lookup = _name_lookup(names, list(masks))
    labels = np.zeros(reference.shape, dtype=np.uint8)
    found: dict[str, int] = {}
    for name in masks:
        value = _match(name, lookup)
        if value is None:
            log.warning("RTSTRUCT ROI %r matches no known structure; skipped", name)
            continue
        found[name] = value
    for name, value in sorted(found.items(), key=lambda item: item[1]):
        labels[masks[name]] = value
    return reference.with_array(labels, meta={"source": "rtstruct", "labels": found, "path": str(path)})


# ------------------------------------------------------------------------- internals


def _read(path):
    import pydicom

    if isinstance(path, pydicom.Dataset):  # read already
        if str(path.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
            raise InputError(f"{getattr(path, 'filename', 'dataset')} is not an RT Structure Set")
        return path
    try:
        dataset = pydicom.dcmread(str(path))
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"cannot read RTSTRUCT {path}: {error}") from None
    if str(dataset.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
        raise InputError(f"{path} is not an RT Structure Set (SOP Class {dataset.get('SOPClassUID', 'missing')})")
    return dataset


def _referenced_series(dataset) -> set[str]:
    return {
        str(series.SeriesInstanceUID)
        for frame in dataset.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in series
    }


def _roi_names(dataset) -> dict[int, str]:
    return {int(roi.ROINumber): str(roi.get("ROIName", "")).strip()
            for roi in dataset.get("StructureSetROISequence", [])}


_DISAMBIGUATION = re.compile(r" \(ROI \d+\)$")
"""Suffix :func:`_unique_names` adds to a name several ROIs share."""


def _unique_names(names: dict[int, str]) -> dict[int, str]:
    """Disambiguate ROI names used more than once (masks are returned by name)."""
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {number: name if counts[name] == 1 else f"{name} (ROI {number})" for number, name in names.items()}


def _check_frame_of_reference(dataset, reference: Volume, path) -> None:
    """Contours in another patient coordinate system would land in the wrong place: refuse them."""
    image_frame = str(reference.meta.get("frame_of_reference_uid") or "")
    frames = {str(item.FrameOfReferenceUID) for item in dataset.get("ReferencedFrameOfReferenceSequence", [])
              if "FrameOfReferenceUID" in item}
    frames |= {str(roi.ReferencedFrameOfReferenceUID) for roi in dataset.get("StructureSetROISequence", [])
               if "ReferencedFrameOfReferenceUID" in roi}
    if image_frame and frames and image_frame not in frames:
        raise InputError(
            f"{path} is drawn in Frame of Reference {min(frames)}, the images are in {image_frame}: "
            "it belongs to another image series"
        )


def _add_contour(mask: np.ndarray, contour, planes: ImagePlanes, name: str) -> None:
    kind = str(contour.get("ContourGeometricType", CLOSED_PLANAR)).strip()
    if kind != CLOSED_PLANAR:
        return  # POINT and OPEN_PLANAR mark positions or lines, not regions
    points = contour_points(contour)
    if len(points) < 3:
        return
    distances = np.abs(planes.plane_distances(points.mean(axis=0)))
    k = int(np.argmin(distances))
    gap = planes.slice_gap()
    tolerance = PLANE_TOLERANCE_MM if not np.isfinite(gap) else PLANE_TOLERANCE_FRACTION * gap
    if distances[k] > tolerance:
        log.warning("a contour of %r lies %.2f mm from the nearest image plane; ignored", name, distances[k])
        return
    mask[k] ^= fill_even_odd(planes.lps_to_pixel(k, points), mask.shape[1:])


def contour_points(contour) -> np.ndarray:
    """Contour Data of one Contour Sequence item as LPS mm points, shape (n, 3).

    Parses the encoded bytes directly when pydicom has not decoded them yet: decoding
    into one DS object per value costs seconds on a large structure set.
    """
    element = contour.get_item(_CONTOUR_DATA_TAG)
    if element is None or element.value is None:
        return np.zeros((0, 3))
    value = element.value
    if isinstance(value, bytes):
        values = np.array(value.decode("ascii").replace("\\", " ").split(), dtype=np.float64)
    else:
        values = np.array([float(v) for v in (value if element.VM > 1 else [value])], dtype=np.float64)
    if values.size % 3:
        raise InputError(f"a contour has {values.size} Contour Data values, not a multiple of 3")
    return values.reshape(-1, 3)


def fill_even_odd(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside a closed polygon (crossing-number rule).

    Args:
        polygon: (row, column) pixel coordinates, shape (n, 2), first point not repeated.
        shape: slice shape (rows, columns).

    Returns:
        Boolean mask, shape ``shape``.  A pixel is inside when an odd number of edges
        cross its row to its left; zero-width keyhole cuts cross twice and cancel.
    """
    rows, columns = shape
    start = polygon
    end = np.roll(polygon, -1, axis=0)
    low = np.minimum(start[:, 0], end[:, 0])
    high = np.maximum(start[:, 0], end[:, 0])
    # Edge covers pixel rows r with low <= r < high (half-open: shared vertices count once).
    first = np.clip(np.ceil(low), 0, rows).astype(np.int64)
    stop = np.clip(np.ceil(high), 0, rows).astype(np.int64)
    counts = np.maximum(stop - first, 0)
    filled = np.zeros(shape, dtype=bool)
    if counts.sum() == 0:
        return filled
    edge = np.repeat(np.arange(len(polygon)), counts)
    row = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + first[edge]
    y0, x0 = start[edge, 0], start[edge, 1]
    y1, x1 = end[edge, 0], end[edge, 1]
    crossing = x0 + (row - y0) * (x1 - x0) / (y1 - y0)
    # First pixel column strictly right of the crossing; crossings off the right edge change nothing.
    column = np.clip(np.floor(crossing).astype(np.int64) + 1, 0, columns)
    # Only the band of rows the polygon spans is touched: O(extent), not O(slice).
    top, bottom = int(row.min()), int(row.max()) + 1
    toggles = np.zeros((bottom - top, columns + 1), dtype=np.int32)
    np.add.at(toggles, (row - top, column), 1)
    filled[top:bottom] = (np.cumsum(toggles, axis=1)[:, :columns] % 2) == 1
    return filled


def _name_lookup(names: Mapping[str, int] | Sequence[Structure] | None, found: list[str]) -> dict[str, int]:
    if names is None:
        return {name.lower(): value for value, name in enumerate(found, 1)}
    if isinstance(names, Mapping):
        return {str(name).lower(): int(value) for name, value in names.items()}
    lookup = {}
    for structure in names:
        lookup[structure.name.lower()] = structure.value
        lookup.setdefault(structure.paper_name.lower(), structure.value)
    return lookup


def _match(name: str, lookup: Mapping[str, int]) -> int | None:
    key = " ".join(_DISAMBIGUATION.sub("", name).lower().split())
    if key in lookup:
        return lookup[key]
    for canonical, synonyms in SYNONYMS.items():
        if canonical in lookup and key in synonyms:
            return lookup[canonical]
    return None
