"""Find DICOM image series in a folder and read one into a :class:`Volume`.

Reading rules (the places where DICOM readers silently go wrong):

* Slices are sorted by the projection of Image Position (Patient) on the slice normal
  (row direction x column direction of Image Orientation (Patient)) — never by file
  name, directory order or Instance Number. Array index ``k`` grows along the normal.
* All slices must share orientation, rows, columns and pixel spacing; positions must be
  distinct and evenly spaced (a gap above :data:`MISSING_SLICE_FACTOR` times the median
  step means missing slices). Small jitter is tolerated and reported in
  ``meta["slice_spacing_nonuniform"]`` (max deviation from the mean step, mm).
* Rescale Slope/Intercept are applied: CT comes back in HU (int16 when exact, else
  float32).
* **Gantry tilt** (the IPP step is not along the slice normal): the acquired grid is kept
  exactly, as a sheared grid: ``direction[:, 2]`` is the unit vector of the actual IPP
  step and ``spacing[2]`` its length. Nothing is resampled, so every voxel keeps its
  value and every slice its own plane; consumers that need an orthogonal grid resample
  explicitly (``Volume.is_orthogonal`` tells them; ``meta["gantry_tilt"]`` is True).
  A sideways drift below :data:`TILT_TOLERANCE_PIXELS` of a pixel over the whole stack
  is IPP rounding, not tilt: the grid stays orthogonal and the drift is reported in
  ``meta["slice_spacing_nonuniform"]``.
* The same SOP Instance found twice (two copies of an export) counts once.
* A single image is read as a 1-slice volume whose ``spacing[2]`` is Spacing Between
  Slices, else Slice Thickness, else 1 mm (``meta["single_slice"] = True``): 3D models
  must refuse it themselves.

Every user-facing failure is an :class:`~CervixAutoSegLib.errors.InputError` with a
one-line message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .mr_weighting import Weighting, mr_weighting
from .volume import Volume

log = logging.getLogger(__name__)

SUPPORTED_MODALITIES = ("CT", "MR")
MEDIA_STORAGE_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
"""SOP Class UID of a DICOMDIR (not an image)."""

ORIENTATION_TOLERANCE = 1e-4
"""Max difference of direction cosines for two slices to count as parallel."""
IOP_UNIT_TOLERANCE = 1e-2
"""Image Orientation (Patient) cosines are rounded by scanners; beyond this they are corrupt."""
SPACING_TOLERANCE_MM = 1e-3
"""Max difference of pixel spacings (mm) within one series."""
DUPLICATE_POSITION_MM = 1e-3
"""Two slices closer than this along the normal are duplicates."""
MISSING_SLICE_FACTOR = 1.5
"""A step larger than this many median steps means slices are missing."""
TILT_TOLERANCE_PIXELS = 0.2
"""The grid is treated as sheared (gantry tilt) only when the IPPs drift sideways off the
slice normal by more than this fraction of a pixel over the whole stack: rounding of
Image Position (Patient) (some scanners write 0.1 mm) must not turn an ordinary series
into a sheared grid (which, for one, NIfTI cannot store); any real tilt of a pelvic
stack drifts by millimetres."""
NONUNIFORM_WARNING_FRACTION = 0.05
"""Warn when slice positions deviate from the uniform grid by more than this fraction of a step."""
DEFAULT_SINGLE_SLICE_SPACING_MM = 1.0
OBLIQUE_LIMIT_DEGREES = 10.0
"""Slices tilted more than this from the nearest anatomical plane are listed as oblique."""

@dataclasses.dataclass
class SeriesInfo:
    """Header summary of one image series (no pixels read).

    ``rows``/``columns``/``pixel_spacing`` are those of the first file (DICOM order:
    pixel_spacing = (row spacing, column spacing) mm); ``orientation`` is the IOP of the
    first file (6 cosines).
    """

    series_instance_uid: str
    modality: str
    description: str
    n_files: int
    n_slices: int
    rows: int
    columns: int
    is_t2: bool | None
    patient_position: str
    study_instance_uid: str
    files: list[Path]
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    slice_spacing: float | None = None
    """Median distance (mm) between slice positions along the normal; None for 1 slice or mixed planes."""
    parallel: bool = True
    """False when the files have different orientations (e.g. a 3-plane localizer)."""
    orientation: tuple[float, ...] | None = None
    sop_class_uid: str = ""
    frame_of_reference_uid: str = ""
    series_number: str = ""
    is_localizer: bool = False
    echo_time: float | None = None
    repetition_time: float | None = None
    weighting: Weighting | None = None
    """MR only: T2-weighted or not, and why (:func:`~CervixAutoSegLib.mr_weighting.mr_weighting` of the first file)."""

    @property
    def is_supported(self) -> bool:
        return self.modality in SUPPORTED_MODALITIES

    @property
    def orientation_label(self) -> str:
        """Nearest anatomical plane of the slices: ``axial``, ``coronal``, ``sagittal`` or ``oblique``."""
        if self.orientation is None:
            return "?"
        if not self.parallel:
            return "mixed planes"
        row, column = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        normal = np.abs(np.cross(row, column))
        axis = int(np.argmax(normal))
        plane = ("sagittal", "coronal", "axial")[axis]
        return plane if normal[axis] > np.cos(np.deg2rad(OBLIQUE_LIMIT_DEGREES)) else f"oblique {plane}"

    def summary(self) -> str:
        """One-line description used in error messages that list series."""
        return f"{self.series_instance_uid} ({self.modality}, '{self.description}', {self.n_slices} slices)"


# ----------------------------------------------------------------- headers
@contextlib.contextmanager
def _quiet_pydicom():
    """Keep pydicom's own logging and warnings off the user's stderr.

    pydicom logs decoder failures with a full traceback and warns about odd values; the
    product reports problems as one InputError line instead, so both go to our debug log.
    """
    pydicom_logger = logging.getLogger("pydicom")
    previous = pydicom_logger.level
    pydicom_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            log.debug("pydicom: %s", warning.message)
    finally:
        pydicom_logger.setLevel(previous)


RAW_DATASET_START = b"\x08\x00"
"""Little-endian group 0x0008: how a DICOM dataset written without the Part 10 preamble
(older ACR-NEMA style exports) begins."""
PREAMBLE_LENGTH = 128


def _has_part10_preamble(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(PREAMBLE_LENGTH + 4)[PREAMBLE_LENGTH:] == b"DICM"


def _looks_like_raw_dataset(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(len(RAW_DATASET_START)) == RAW_DATASET_START


def _dcmread(path: Path, *, stop_before_pixels: bool = False):
    """Read a Part 10 file, or a raw dataset without preamble (only when it starts like one)."""
    import pydicom

    force = not _has_part10_preamble(path) and _looks_like_raw_dataset(path)
    with _quiet_pydicom():
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=force)
    if force and "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        _set_transfer_syntax_from_encoding(ds)
    return ds


def _set_transfer_syntax_from_encoding(ds) -> None:
    """A raw dataset has no file meta: record the encoding it was parsed with so pixels decode."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if hasattr(ds, "original_encoding"):  # pydicom >= 3
        implicit, little = ds.original_encoding
    else:  # pragma: no cover - pydicom 2.4
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _read_header(path: Path):
    """The dataset of ``path`` without pixel data, or None when it is not a DICOM file."""
    from pydicom.errors import InvalidDicomError

    try:
        return _dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError):
        return None
    except Exception as error:  # noqa: BLE001 — malformed elements raise many types; a scan skips the file
        log.debug("skipping unreadable DICOM %s: %s", path, error)
        return None


def _is_image(ds) -> bool:
    if str(getattr(ds, "SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY_STORAGE:
        return False
    return "Rows" in ds and "Columns" in ds


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None


def _float(ds, keyword: str) -> float | None:
    values = _floats(getattr(ds, keyword, None))
    return values[0] if values else None


def _text(ds, keyword: str) -> str:
    from pydicom.multival import MultiValue

    value = getattr(ds, keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def detect_t2(ds) -> bool | None:
    """Whether an MR image is T2-weighted: True / False / None (undecidable).

    The three-valued form of :func:`CervixAutoSegLib.mr_weighting.mr_weighting`, which holds
    the rules and says why.
    """
    return mr_weighting(ds).is_t2


# ----------------------------------------------------------------- discovery
def _iter_files(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    if name.upper() == "DICOMDIR" or name.startswith("."):
                        continue
                    yield Path(root) / name
        elif path.is_file():
            yield path


def _scan(paths: Iterable[Path]) -> dict[str, list[tuple[Path, Any]]]:
    """Headers of every DICOM image file under ``paths``, grouped by Series Instance UID."""
    groups: dict[str, list[tuple[Path, Any]]] = {}
    seen_instances: set[str] = set()
    for path in _iter_files(paths):
        ds = _read_header(path)
        if ds is None or not _is_image(ds):
            continue
        instance = _text(ds, "SOPInstanceUID")
        if instance and instance in seen_instances:
            # The same image copied twice (e.g. two exports in one tree) is one slice.
            log.debug("skipping %s: SOP instance %s already seen", path, instance)
            continue
        seen_instances.add(instance)
        uid = str(getattr(ds, "SeriesInstanceUID", "") or f"(no series UID: {path.parent})")
        groups.setdefault(uid, []).append((path, ds))
    return groups


def _info(uid: str, members: list[tuple[Path, Any]]) -> SeriesInfo:
    first = members[0][1]
    modality = _text(first, "Modality").upper()
    frames = int(_float(first, "NumberOfFrames") or 1)
    positions = {_floats(getattr(ds, "ImagePositionPatient", None)) for _, ds in members}
    spacing = _floats(getattr(first, "PixelSpacing", None))
    image_type = _text(first, "ImageType").upper()
    orientations = [_floats(getattr(ds, "ImageOrientationPatient", None)) for _, ds in members]
    parallel = all(
        o is not None and orientations[0] is not None and len(o) == len(orientations[0])
        and np.max(np.abs(np.subtract(o, orientations[0]))) <= ORIENTATION_TOLERANCE
        for o in orientations
    ) or all(o is None for o in orientations)
    weighting = mr_weighting(first) if modality == "MR" else None
    return SeriesInfo(
        series_instance_uid=uid,
        modality=modality,
        description=_text(first, "SeriesDescription") or _text(first, "ProtocolName"),
        n_files=len(members),
        n_slices=len(positions) if frames == 1 else frames * len(members),
        rows=int(getattr(first, "Rows", 0) or 0),
        columns=int(getattr(first, "Columns", 0) or 0),
        is_t2=weighting.is_t2 if weighting is not None else None,
        patient_position=_text(first, "PatientPosition"),
        study_instance_uid=_text(first, "StudyInstanceUID"),
        files=[path for path, _ in members],
        pixel_spacing=tuple(spacing[:2]) if spacing and len(spacing) >= 2 else None,
        slice_thickness=_float(first, "SliceThickness"),
        slice_spacing=_median_step(members) if parallel else None,
        parallel=parallel,
        orientation=_floats(getattr(first, "ImageOrientationPatient", None)),
        sop_class_uid=_text(first, "SOPClassUID"),
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
        series_number=_text(first, "SeriesNumber"),
        is_localizer="LOCALIZER" in image_type.split("\\"),
        echo_time=_float(first, "EchoTime"),
        repetition_time=_float(first, "RepetitionTime"),
        weighting=weighting,
    )


def _median_step(members: list[tuple[Path, Any]]) -> float | None:
    """Median spacing along the first slice's normal, from headers only (listing, no checks)."""
    iop = _floats(getattr(members[0][1], "ImageOrientationPatient", None))
    if iop is None or len(iop) != 6:
        return None
    normal = np.cross(iop[:3], iop[3:])
    along = []
    for _, ds in members:
        position = _floats(getattr(ds, "ImagePositionPatient", None))
        if position is not None and len(position) == 3:
            along.append(float(np.dot(position, normal)))
    steps = np.diff(np.unique(np.round(along, 3)))
    return float(np.median(steps)) if steps.size else None


def find_series(folder: Path | str | Sequence[Path | str]) -> list[SeriesInfo]:
    """Every DICOM image series under ``folder`` (recursive), sorted by modality and description.

    Non-DICOM files, DICOMDIR and non-image objects (RTSTRUCT, RTPLAN, SR...) are ignored.
    ``folder`` may also be a file or a list of files/folders.
    """
    paths = [Path(p) for p in folder] if isinstance(folder, (list, tuple)) else [Path(folder)]
    groups = _scan(paths)
    infos = [_info(uid, members) for uid, members in groups.items()]
    return sorted(infos, key=lambda info: (info.modality, info.series_number, info.description, info.series_instance_uid))


def _listing(infos: Sequence[SeriesInfo]) -> str:
    return "; ".join(info.summary() for info in infos)


def choose_series(
    infos: Sequence[SeriesInfo],
    *,
    series_uid: str | None = None,
    modality: str | None = None,
    t2: bool | None = None,
    preferred: str | None = None,
    where: str = "the input",
) -> SeriesInfo:
    """Pick the series to segment.

    ``series_uid`` wins. Otherwise, among CT/MR series that are not localizers or mixed
    planes (filtered
    by ``modality``, and for MR by ``t2`` when that leaves a choice): the only one; else the only CT
    and/or the only T2w MR — ``preferred`` (``"CT"``/``"MR"``) breaks a tie between them.
    Anything else is ambiguous: InputError listing the series and asking for --series.
    """
    if not infos:
        raise InputError(f"no DICOM image series found in {where}")
    if series_uid:
        for info in infos:
            if info.series_instance_uid == series_uid:
                _check_supported(info)
                return info
        raise InputError(f"series {series_uid} not found in {where}; available: {_listing(infos)}")
    supported = [info for info in infos if info.is_supported]
    if not supported:
        unsupported = sorted({info.modality or "(none)" for info in infos})
        raise InputError(
            f"unsupported modality {', '.join(unsupported)} in {where}: only CT and MR image series can be "
            f"segmented (found {_listing(infos)})"
        )
    # Localizers and multi-plane series are never what a user wants contoured.
    candidates = [info for info in supported if not info.is_localizer and info.parallel] or supported
    if modality:
        candidates = [info for info in candidates if info.modality == modality.upper()]
        if not candidates:
            raise InputError(f"no {modality.upper()} series in {where}; found {_listing(infos)}")
    if t2 is not None and len(candidates) > 1:
        # With a single candidate ``t2`` only overrides its flag; with several it also selects.
        candidates = [info for info in candidates if info.modality != "MR" or info.is_t2 == t2] or candidates
    if len(candidates) == 1:
        return candidates[0]
    cts = [info for info in candidates if info.modality == "CT"]
    t2s = [info for info in candidates if info.modality == "MR" and info.is_t2]
    preferred = preferred.upper() if preferred else None
    options = []
    if preferred in (None, "CT") and len(cts) == 1:
        options.append(cts[0])
    if preferred in (None, "MR") and len(t2s) == 1:
        options.append(t2s[0])
    if len(options) == 1:
        return options[0]
    raise InputError(
        f"{len(candidates or supported)} image series in {where}, cannot choose: {_listing(candidates or supported)}; "
        "pass --series UID to pick one"
    )


def _check_supported(info: SeriesInfo) -> None:
    if not info.is_supported:
        raise InputError(
            f"unsupported modality {info.modality or '(none)'} (series {info.series_instance_uid}, "
            f"'{info.description}'): only CT and MR image series can be segmented"
        )


# ----------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class _SliceGeometry:
    """Geometry of a sorted stack: LPS mm, (i, j, k) order."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    positions: np.ndarray  # (nz, 3) IPP per k
    nonuniform_mm: float
    tilted: bool


def _orientation(ds, path: Path) -> np.ndarray:
    iop = _floats(getattr(ds, "ImageOrientationPatient", None))
    if iop is None or len(iop) != 6:
        raise InputError(f"{path.name} has no Image Orientation (Patient): cannot place it in space")
    row, column = np.asarray(iop[:3]), np.asarray(iop[3:])
    lengths = np.array([np.linalg.norm(row), np.linalg.norm(column)])
    if np.any(np.abs(lengths - 1) > IOP_UNIT_TOLERANCE) or abs(np.dot(row, column)) > IOP_UNIT_TOLERANCE:
        raise InputError(
            f"{path.name} has an invalid Image Orientation (Patient) {list(iop)}: "
            "row and column must be perpendicular unit vectors"
        )
    return np.concatenate([row / lengths[0], column / lengths[1]])


def _position(ds, path: Path) -> np.ndarray:
    ipp = _floats(getattr(ds, "ImagePositionPatient", None))
    if ipp is None or len(ipp) != 3:
        raise InputError(f"{path.name} has no Image Position (Patient): cannot place it in space")
    return np.asarray(ipp)


def _pixel_spacing(ds, path: Path) -> np.ndarray:
    spacing = _floats(getattr(ds, "PixelSpacing", None)) or _floats(getattr(ds, "ImagerPixelSpacing", None))
    if spacing is None or len(spacing) != 2 or min(spacing) <= 0:
        raise InputError(f"{path.name} has no valid Pixel Spacing")
    return np.asarray(spacing)


def _check_consistent(members: list[tuple[Path, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Same IOP, rows, columns and pixel spacing in every slice; returns (IOP, pixel spacing)."""
    first_path, first = members[0]
    iop = _orientation(first, first_path)
    spacing = _pixel_spacing(first, first_path)
    size = (int(first.Rows), int(first.Columns))
    for path, ds in members[1:]:
        other = _orientation(ds, path)
        if np.max(np.abs(other - iop)) > ORIENTATION_TOLERANCE:
            raise InputError(
                f"slices are not parallel: {first_path.name} has orientation {np.round(iop, 4).tolist()} but "
                f"{path.name} has {np.round(other, 4).tolist()} (a multi-plane localizer or mixed series?)"
            )
        other_size = (int(ds.Rows), int(ds.Columns))
        other_spacing = _pixel_spacing(ds, path)
        if other_size != size or np.max(np.abs(other_spacing - spacing)) > SPACING_TOLERANCE_MM:
            raise InputError(
                f"mixed sizes in one series: {first_path.name} is {size[0]}x{size[1]} pixels of "
                f"{spacing.tolist()} mm, {path.name} is {other_size[0]}x{other_size[1]} of {other_spacing.tolist()} mm"
            )
    return iop, spacing


def _stack_geometry(
    positions: np.ndarray, iop: np.ndarray, pixel_spacing: np.ndarray, names: Sequence[str], single_spacing: float
) -> _SliceGeometry:
    """Grid of slices already sorted along the normal. ``positions`` (nz, 3) LPS mm."""
    row, column = iop[:3], iop[3:]
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    spacing_xy = np.array([pixel_spacing[1], pixel_spacing[0]])  # DICOM: (row spacing, column spacing)
    nz = len(positions)
    if nz == 1:
        return _SliceGeometry(
            origin=positions[0], spacing=np.append(spacing_xy, single_spacing),
            direction=np.column_stack([row, column, normal]), positions=positions, nonuniform_mm=0.0, tilted=False,
        )
    along = positions @ normal
    steps = np.diff(along)
    for index in np.flatnonzero(steps < DUPLICATE_POSITION_MM):
        raise InputError(
            f"duplicate slice position {along[index]:.3f} mm along the slice normal ({names[index]} and "
            f"{names[index + 1]}): the series mixes several acquisitions (echoes, phases or repeats)"
        )
    median = float(np.median(steps))
    for index in np.flatnonzero(steps > MISSING_SLICE_FACTOR * median):
        raise InputError(
            f"missing slices: gap of {steps[index]:.2f} mm between positions {along[index]:.2f} and "
            f"{along[index + 1]:.2f} mm (usual step {median:.2f} mm)"
        )
    step = (positions[-1] - positions[0]) / (nz - 1)
    axial = float(np.dot(step, normal))
    lateral = step - axial * normal
    drift = float(np.linalg.norm(lateral)) * (nz - 1)
    tilted = drift > TILT_TOLERANCE_PIXELS * float(np.min(pixel_spacing))
    if tilted:
        slice_direction, slice_spacing = step / np.linalg.norm(step), float(np.linalg.norm(step))
    else:
        slice_direction, slice_spacing = normal, axial
    expected = positions[0] + np.arange(nz)[:, np.newaxis] * (slice_spacing * slice_direction)
    nonuniform = float(np.max(np.linalg.norm(positions - expected, axis=1)))
    return _SliceGeometry(
        origin=positions[0], spacing=np.append(spacing_xy, slice_spacing),
        direction=np.column_stack([row, column, slice_direction]), positions=positions,
        nonuniform_mm=nonuniform, tilted=tilted,
    )


# ----------------------------------------------------------------- pixels
def _pixels(path: Path) -> tuple[np.ndarray, Any]:
    """(rows, columns) stored pixel values and the full dataset of one file."""
    try:
        ds = _dcmread(path)
    except Exception as error:
        raise InputError(f"cannot read DICOM file {path}: {_one_line(error)}") from error
    if "PixelData" not in ds:
        raise InputError(f"{path} has no pixel data")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise InputError(f"{path} is a colour image ({ds.SamplesPerPixel} samples per pixel); CT/MR must be greyscale")
    try:
        with _quiet_pydicom():
            array = ds.pixel_array
    except Exception as error:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise InputError(f"cannot decode pixel data of {path} (transfer syntax {name}): {_one_line(error)}") from error
    if array.ndim != 2:
        raise InputError(
            f"{path} holds {array.shape[0]} frames: multi-frame (enhanced) images are not supported, "
            "export the series as one file per slice"
        )
    return array, ds


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _rescale(ds) -> tuple[float, float]:
    slope = _float(ds, "RescaleSlope")
    intercept = _float(ds, "RescaleIntercept")
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _to_output_values(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply the per-slice rescale to ``stored`` (z, y, x).

    Returns the stored array itself for an identity rescale, int16 when the result is
    exact and fits (CT in HU), float32 otherwise. Works slice by slice so a large
    series never needs a 64-bit copy.
    """
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0):
        return stored
    if stored.size and np.all(slopes == 1.0) and np.all(intercepts == np.round(intercepts)):
        low = int(stored.min()) + int(intercepts.min())
        high = int(stored.max()) + int(intercepts.max())
        if np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max:
            values = np.empty(stored.shape, np.int16)
            for k, intercept in enumerate(intercepts):
                values[k] = stored[k].astype(np.int32) + int(intercept)
            return values
    values = np.empty(stored.shape, np.float32)
    for k, (slope, intercept) in enumerate(zip(slopes, intercepts)):
        values[k] = stored[k].astype(np.float64) * slope + intercept
    return values


# ----------------------------------------------------------------- reading
def _read_pixels(paths: Sequence[Path], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored values (z, y, x) of ``paths`` in order, with per-slice rescale slopes and intercepts."""
    stored: np.ndarray | None = None
    slopes, intercepts = np.ones(len(paths)), np.zeros(len(paths))
    for k, path in enumerate(paths):
        array, ds = _pixels(path)
        if array.shape != size:
            raise InputError(f"pixel data of {path} is {array.shape[0]}x{array.shape[1]}, header says {size[0]}x{size[1]}")
        if stored is None:
            stored = np.empty((len(paths), *size), array.dtype)
        elif not np.can_cast(array.dtype, stored.dtype, "safe"):
            # Signed and unsigned slices in one series: widen instead of wrapping.
            stored = stored.astype(np.result_type(stored.dtype, array.dtype))
        stored[k] = array
        slopes[k], intercepts[k] = _rescale(ds)
    assert stored is not None  # a series has at least one file
    return stored, slopes, intercepts


def read_series_files(info: SeriesInfo, *, t2: bool | None = None) -> Volume:
    """Read the files of one series (as found by :func:`find_series`) into a Volume.

    Returns a Volume with ``array`` (z, y, x) = (slice, row, column), k growing along the
    slice normal, geometry in LPS mm. See the module docstring for the rules.
    """
    _check_supported(info)
    members = []
    for path in info.files:
        ds = _read_header(path)
        if ds is None:
            raise InputError(f"cannot read DICOM file {path}")
        if int(_float(ds, "NumberOfFrames") or 1) > 1:
            raise InputError(
                f"{path} holds {int(_float(ds, 'NumberOfFrames'))} frames: multi-frame (enhanced) images are not "
                "supported, export the series as one file per slice"
            )
        members.append((path, ds))
    iop, pixel_spacing = _check_consistent(members)
    normal = np.cross(iop[:3], iop[3:])
    members.sort(key=lambda member: float(np.dot(_position(member[1], member[0]), normal)))
    positions = np.array([_position(ds, path) for path, ds in members])
    first = members[0][1]
    single_spacing = (
        _float(first, "SpacingBetweenSlices") or _float(first, "SliceThickness") or DEFAULT_SINGLE_SLICE_SPACING_MM
    )
    geometry = _stack_geometry(positions, iop, pixel_spacing, [p.name for p, _ in members], single_spacing)

    stored, slopes, intercepts = _read_pixels([path for path, _ in members], (int(first.Rows), int(first.Columns)))
    values = _to_output_values(stored, slopes, intercepts)

    is_t2 = t2 if (t2 is not None and info.modality == "MR") else info.is_t2
    meta = {
        "source": "dicom",
        "modality": info.modality,
        "series_instance_uid": info.series_instance_uid,
        "study_instance_uid": _text(first, "StudyInstanceUID"),
        "frame_of_reference_uid": _text(first, "FrameOfReferenceUID"),
        "sop_class_uid": _text(first, "SOPClassUID"),
        "sop_instance_uids": [_text(ds, "SOPInstanceUID") for _, ds in members],
        "slice_positions": geometry.positions.tolist(),
        "files": [str(path) for path, _ in members],
        "series_description": info.description,
        "patient_position": _text(first, "PatientPosition"),
        "patient_id": _text(first, "PatientID"),
        "patient_name": _text(first, "PatientName"),
        "is_t2": is_t2,
        "slice_spacing_nonuniform": geometry.nonuniform_mm,
        "gantry_tilt": geometry.tilted,
        "single_slice": len(members) == 1,
        "rescale_slope": float(slopes[0]),
        "rescale_intercept": float(intercepts[0]),
    }
    if info.modality == "MR":
        meta.update(echo_time=info.echo_time, repetition_time=info.repetition_time)
        if info.weighting is not None:  # the header's verdict, whatever ``t2`` forced into is_t2
            meta["mr_weighting"] = info.weighting._asdict()
    if geometry.nonuniform_mm > NONUNIFORM_WARNING_FRACTION * geometry.spacing[2]:
        log.warning("slice positions deviate up to %.3f mm from a uniform grid", geometry.nonuniform_mm)
    return Volume(
        array=values, spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction,
        modality=info.modality, meta=meta,
    )


def read_dicom_series(
    folder_or_files: Path | str | Sequence[Path | str],
    series_uid: str | None = None,
    modality: str | None = None,
    t2: bool | None = None,
    preferred: str | None = None,
) -> Volume:
    """Read one DICOM image series into a :class:`Volume`.

    Args:
        folder_or_files: a folder (searched recursively), one file (read alone, as a
            1-slice volume) or a list of files.
        series_uid: Series Instance UID to read when there are several.
        modality: ``"CT"`` or ``"MR"`` to restrict the automatic choice.
        t2: for MR, force (True/False) the T2w flag instead of the header heuristic;
            also restricts the automatic choice.
        preferred: ``"CT"``/``"MR"`` to break a tie between one CT and one T2w MR.
    """
    if isinstance(folder_or_files, (list, tuple)):
        paths = [Path(p) for p in folder_or_files]
        where = f"{len(paths)} files"
    else:
        paths = [Path(folder_or_files)]
        where = str(paths[0])
    for path in paths:
        if not path.exists():
            raise InputError(f"{path} does not exist")
    infos = find_series(paths)
    info = choose_series(infos, series_uid=series_uid, modality=modality, t2=t2, preferred=preferred, where=where)
    return read_series_files(info, t2=t2)
