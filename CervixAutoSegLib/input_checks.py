"""Is this image usable?  The checks ``segment`` and ``series --check`` run before any heavy work.

A reader hands over a :class:`~CervixAutoSegLib.volume.Volume`; :func:`validate_input` then
refuses, in one line naming the file and the offending value, everything that would otherwise
come out silently wrong or fail late (after minutes of network, or with a traceback):

* spacing not finite and positive (:func:`check_spacing_values`, also used on raw headers);
* a direction whose in-plane axes are not orthonormal, or whose slice axis is sheared in a way
  no gantry tilt produces (:func:`check_direction`);
* a field of view no patient has (:func:`check_extent`), or a position no scanner reaches
  (:func:`check_position_values`);
* more memory than the machine has for the model's working grid (:func:`check_memory`);
* NaN/Inf voxels (:func:`check_finite_voxels`);
* a label map given as the image (:func:`check_not_label_map`);
* a DICOM series without the UIDs the RTSTRUCT writer needs (:func:`check_dicom_references`);
  an optional (Type 3) value the writer copies but cannot use, such as a Patient's Weight that
  is not a number, is no refusal: the writer leaves it out, and the input warnings
  (``volume.meta["input_warnings"]``, shown by ``segment`` and ``series --check``, kept in
  report.json) say so.

Conventions as in :mod:`.volume`: arrays are indexed (z, y, x); spacing, origin and direction
are in (x, y, z) = (i, j, k) order, in DICOM patient LPS millimetres.  Every check raises
:class:`~CervixAutoSegLib.errors.InputError` with a one-line message the user can act on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume

IN_PLANE_COSINE_TOLERANCE = 1e-2
"""Row and column directions may miss unit length and perpendicularity by this much (0.6°):
scanners round Image Orientation (Patient) to a few decimals, and NIfTI keeps float32; a real
in-plane shear (the 45° of a corrupt header) is far beyond it."""
SIDEWAYS_DRIFT_TOLERANCE_PIXELS = 0.5
"""A gantry tilts the slices about the image rows, so the slice stack may lean only towards the
column direction.  A lean along the rows is refused once it moves the last slice sideways by
more than half a pixel: rounding of Image Position (Patient) (0.1 mm) stays far below that."""
MAX_GANTRY_TILT_DEGREES = 45.0
"""CT gantries tilt by at most about 30°; a slice axis leaning further is a corrupt header."""
MAX_POSITION_MM = 1e5
"""No scanner places a voxel 100 m from its isocentre: a position beyond this is a corrupt header
(1e308 mm even overflows the float32 of NIfTI, which then stores origin 0 without a word)."""
MAX_FIELD_OF_VIEW_MM = 2000.0
"""No patient is longer and no scanner table travels further: a larger extent means a wrong
spacing (e.g. Pixel Spacing in cm or µm)."""
WORKING_FLOAT32_COPIES = 4
"""Float32 arrays of the model's working-grid size alive at the peak of a run: the resampled
image, its normalised copy, and the network's class scores with the sliding window's weights."""
INPUT_FLOAT32_COPIES = 2
"""Float32 copies of the input grid made while preprocessing (reoriented crop, intensities)."""
FLOAT32_BYTES = 4
LABEL_MAP_MAX_VALUE = 255
"""Label maps are uint8 (labels.nii.gz, Slicer label maps); images span far wider ranges."""
LABEL_MAP_MAX_DISTINCT = 16
"""A label map holds background plus a few structures; even an 8-bit image has hundreds of grey values."""
MIB = 1024 ** 2
GIB = 1024 ** 3
MEMINFO = Path("/proc/meminfo")
"""Linux: MemAvailable counts the page cache the kernel can give back, unlike MemFree."""
CGROUP_MEMORY = Path("/sys/fs/cgroup")
"""cgroup v2 limits (containers, CI runners) can be lower than the machine's free memory."""


@dataclasses.dataclass(frozen=True)
class InputSummary:
    """What :func:`validate_input` found for a usable image (for ``series --check``)."""

    name: str
    field_of_view_mm: tuple[float, float, float]
    tilt_degrees: float
    memory_bytes: int
    available_bytes: int | None

    def verdict(self) -> str:
        """One line: the image passed every check, with the numbers checked."""
        fov = " x ".join(f"{v:.0f}" for v in self.field_of_view_mm)
        tilt = f", gantry tilt {self.tilt_degrees:.1f}°" if self.tilt_degrees else ""
        memory = f"needs ~{_bytes(self.memory_bytes)}"
        if self.available_bytes is not None:
            memory += f" of {_bytes(self.available_bytes)} available"
        return (f"verdict: usable by segment (field of view {fov} mm, orthonormal image axes{tilt}, "
                f"voxel values finite, {memory})")


# ------------------------------------------------------------------ names
def source_name(volume: Volume, fallback: str = "the image") -> str:
    """How messages name the image: its file, the folder of its DICOM series, or its Slicer name."""
    meta = volume.meta
    files = meta.get("files") or []
    if meta.get("source") == "dicom" and files:
        return f"the DICOM series in {Path(files[0]).parent}"
    if files:
        return str(files[0])
    if meta.get("name"):
        return f"volume '{meta['name']}'"
    return fallback


def _bytes(size: float) -> str:
    """``"40 GiB"``-style size: GiB from 1 GiB up, MiB below (a small image in a tight container)."""
    value, unit = (size / GIB, "GiB") if size >= GIB else (size / MIB, "MiB")
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.4g}" for v in values)


# ------------------------------------------------------------------ geometry
def check_spacing_values(values: Sequence[float], name: str, what: str = "voxel spacing") -> np.ndarray:
    """``values`` (mm) as an array when every one is finite and positive, else InputError.

    Used on Volume spacings (x, y, z) and on raw header fields (NIfTI pixdim, DICOM Pixel
    Spacing), where a reader would otherwise substitute 1 mm without a word.
    """
    spacing = np.asarray(values, dtype=np.float64).reshape(-1)
    if spacing.size == 0 or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        shown = ", ".join(f"{float(v):g}" for v in spacing)
        raise InputError(f"{name} has {what} ({shown}) mm: every spacing must be a positive number; "
                         "fix the header or export the image again")
    return spacing


def check_position_values(values: Sequence[float], name: str, what: str = "origin") -> np.ndarray:
    """``values`` (mm) as an array when every one is finite and within :data:`MAX_POSITION_MM`, else InputError.

    Used on Volume origins and on raw DICOM Image Position (Patient).
    """
    position = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(position)) or np.any(np.abs(position) > MAX_POSITION_MM):
        shown = ", ".join(f"{float(v):.6g}" for v in position)
        raise InputError(f"{name} has {what} ({shown}) mm, beyond any scanner's reach (±{MAX_POSITION_MM:g} mm): "
                         "fix the header or export the image again")
    return position


def check_direction(volume: Volume, name: str) -> float:
    """Refuse a direction no scanner produces; return the gantry tilt in degrees (0 for orthogonal grids).

    Columns of ``volume.direction`` are the LPS unit vectors of the index axes (i, j, k).  The
    row (i) and column (j) directions must be orthonormal.  The slice axis (k) may lean away
    from the slice normal only towards the column direction, as a gantry tilt does, and by at
    most :data:`MAX_GANTRY_TILT_DEGREES`.
    """
    direction = volume.direction
    lengths = np.linalg.norm(direction, axis=0)
    row, column = direction[:, 0] / lengths[0], direction[:, 1] / lengths[1]
    skew = float(np.dot(row, column))
    if np.any(np.abs(lengths - 1) > IN_PLANE_COSINE_TOLERANCE):
        shown = ", ".join(f"{v:.4g}" for v in lengths)
        raise InputError(f"{name} has direction vectors of length ({shown}), not unit vectors: fix the header")
    if abs(skew) > IN_PLANE_COSINE_TOLERANCE:
        angle = np.degrees(np.arccos(np.clip(skew, -1.0, 1.0)))
        raise InputError(
            f"{name} has image rows and columns at {angle:.1f}° to each other, not 90°: the in-plane axes of a "
            "scan are perpendicular (only the slice axis may lean, as a gantry tilts); fix the header"
        )
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    slice_axis = direction[:, 2] / lengths[2]
    sideways_mm = abs(float(np.dot(slice_axis, row))) * volume.spacing[2] * (volume.shape[0] - 1)
    if sideways_mm > SIDEWAYS_DRIFT_TOLERANCE_PIXELS * volume.spacing[0]:
        lean = np.degrees(np.arcsin(min(1.0, abs(float(np.dot(slice_axis, row))))))
        raise InputError(
            f"{name} has its slice axis sheared {lean:.1f}° along the image rows (the last slice moves "
            f"{sideways_mm:.1f} mm sideways): a gantry tilt shears only along the columns; fix the header"
        )
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(np.dot(slice_axis, normal)))))))
    if tilt > MAX_GANTRY_TILT_DEGREES:
        raise InputError(
            f"{name} has its slice axis {tilt:.1f}° off the slice normal, more than any gantry tilts "
            f"(≤ {MAX_GANTRY_TILT_DEGREES:g}°): fix the header"
        )
    return tilt if volume.shape[0] > 1 and not volume.is_orthogonal else 0.0


def check_extent(volume: Volume, name: str) -> np.ndarray:
    """Field of view (x, y, z) mm = size x spacing per index axis; InputError beyond any patient."""
    fov = np.asarray(volume.size_ijk, dtype=np.float64) * volume.spacing
    if np.any(fov > MAX_FIELD_OF_VIEW_MM):
        raise InputError(
            f"{name} spans {_mm(fov)} mm (x, y, z), more than any patient or scanner "
            f"({MAX_FIELD_OF_VIEW_MM:g} mm): check the voxel spacing {_mm(volume.spacing)} mm"
        )
    return fov


# ------------------------------------------------------------------ memory
def model_working_spacings(modality: str | None, models_root: str | Path | None = None
                           ) -> list[tuple[float, ...]]:
    """``preprocessing.spacing_mm`` (x, y[, z]) of every installed model that could run on ``modality``.

    Read from the model cards of the registered families of that modality (all families when
    it is unknown); a CT card gives (x, y) only, since its slices are never resampled along z.
    """
    from .families import families
    from .models import list_models

    wanted = {family.name for family in families()
              if not modality or family.modality.upper() == modality.upper()}
    spacings = []
    for card in list_models(models_root):
        values = card.preprocessing.get("spacing_mm") if card.family in wanted else None
        try:
            spacing = tuple(float(v) for v in values or ())
        except (TypeError, ValueError):
            continue  # a card's own problem: reported when the model is loaded, not here
        if spacing and all(np.isfinite(spacing)) and min(spacing) > 0:
            spacings.append(spacing)
    return spacings


def working_shape(volume: Volume, target_spacing: Sequence[float]) -> tuple[int, int, int]:
    """(z, y, x) size of ``volume`` resampled to ``target_spacing`` (x, y[, z]) mm along LPS.

    The families resample after turning the array to LPS layout, so each index axis gets the
    target of the LPS axis it is closest to; axes the target leaves out keep their spacing.
    """
    from .orientation import Reorientation

    turn = Reorientation.to_lps(volume.direction, volume.spacing)
    size_xyz = np.asarray([volume.shape[axis] for axis in turn.axes][::-1], dtype=np.float64)
    targets = [float(target_spacing[a]) if a < len(target_spacing) else turn.spacing[a] for a in range(3)]
    size = np.maximum(1, np.ceil(size_xyz * np.asarray(turn.spacing) / np.asarray(targets)))
    return tuple(int(v) for v in size[::-1])  # type: ignore[return-value]


def estimate_peak_bytes(volume: Volume, target_spacings: Sequence[Sequence[float]] = ()) -> tuple[int, tuple]:
    """(bytes, working (z, y, x) shape) the largest arrays of a run need, for the worst model.

    Counts :data:`WORKING_FLOAT32_COPIES` float32 arrays on the working grid plus
    :data:`INPUT_FLOAT32_COPIES` of the input grid; network activations work patch by patch
    and do not grow with the image.
    """
    shapes = [working_shape(volume, spacing) for spacing in target_spacings] or [volume.shape]
    largest = max(shapes, key=lambda shape: int(np.prod(shape, dtype=np.float64)))
    working = float(np.prod(largest, dtype=np.float64)) * WORKING_FLOAT32_COPIES
    inputs = float(volume.array.size) * INPUT_FLOAT32_COPIES
    return int((working + inputs) * FLOAT32_BYTES), largest


def available_memory_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, lowered by a cgroup v2 limit; None if unknown."""
    available = None
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None and hasattr(os, "sysconf"):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            available = None
    try:
        limit = (CGROUP_MEMORY / "memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int((CGROUP_MEMORY / "memory.current").read_text())
            available = room if available is None else min(available, room)
    except (OSError, ValueError):
        pass
    return available


def check_memory(volume: Volume, name: str, target_spacings: Sequence[Sequence[float]] = (),
                 available: int | None = None) -> tuple[int, int | None]:
    """(estimated bytes, available bytes); InputError when the run would need more than there is.

    ``available`` defaults to :func:`available_memory_bytes`; when that is unknown nothing is refused.
    """
    need, shape = estimate_peak_bytes(volume, target_spacings)
    available = available_memory_bytes() if available is None else available
    if available is not None and need > available:
        raise InputError(
            f"{name} would need ~{_bytes(need)} of memory ({shape[2]} x {shape[1]} x {shape[0]} voxels on the "
            f"model's grid), {_bytes(available)} available: check the voxel spacing {_mm(volume.spacing)} mm "
            "or free memory"
        )
    return need, available


# ------------------------------------------------------------------ voxels
def check_finite_voxels(array: np.ndarray, name: str) -> None:
    """InputError giving the count when a (z, y, x) array holds NaN or Inf (float images only)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return  # integers cannot hold NaN or Inf
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(
            f"{name} has {bad} non-finite voxels (NaN/Inf) of {array.size}: the network would turn them into "
            "wrong contours; replace them (e.g. with the background value) and save the image again"
        )


def _few_integer_values(array: np.ndarray, limit: int) -> np.ndarray | None:
    """The distinct values of ``array`` when they are at most ``limit`` integers, else None.

    Slice by slice, so a large image costs no full-size temporary and stops at the first
    slice that rules a label map out.
    """
    found: set = set()
    for plane in array:
        values = np.unique(plane)
        if np.issubdtype(values.dtype, np.inexact) and np.any(values != np.round(values)):
            return None
        found.update(values.tolist())
        if len(found) > limit:
            return None
    return np.array(sorted(found))


def check_not_label_map(array: np.ndarray, name: str) -> None:
    """InputError when the (z, y, x) array looks like a label map, not a CT or MR image.

    A label map: at least two and at most :data:`LABEL_MAP_MAX_DISTINCT` integer values within
    0..:data:`LABEL_MAP_MAX_VALUE` (a previous run's labels.nii.gz, a phantom's truth). A
    constant image is left to the model's own checks (it finds no body or no organ).
    """
    array = np.asarray(array)
    if array.size == 0 or array.min() < 0 or array.max() > LABEL_MAP_MAX_VALUE:
        return  # the cheap test first: CT reaches -1000 HU, MR exceeds 255
    values = _few_integer_values(array, LABEL_MAP_MAX_DISTINCT)
    if values is not None and values.size >= 2:
        shown = ", ".join(f"{v:g}" for v in values)
        raise InputError(
            f"{name} looks like a label map, not a CT/MR image: its voxels take only the values {shown}; "
            "give the image that was contoured (e.g. the DICOM series), not a segmentation"
        )


# ------------------------------------------------------------------ what the writers need
DICOM_REFERENCES = (
    ("study_instance_uid", "Study Instance UID (0020,000D)"),
    ("series_instance_uid", "Series Instance UID (0020,000E)"),
    ("frame_of_reference_uid", "Frame of Reference UID (0020,0052)"),
)
"""Identifiers the RTSTRUCT must repeat to reference its images (the writer refuses without them)."""
def check_dicom_references(volume: Volume, name: str) -> list[str]:
    """For a Volume read from DICOM: the UIDs the RTSTRUCT writer needs are there (InputError if not).

    Header problems every reader must refuse (positions, spacing, rescale) are the DICOM
    reader's; these are the ones only the RTSTRUCT writer would trip over, after the network.
    Returns warnings (one line each) for optional values the writer will leave out
    (:func:`CervixAutoSegLib.rtstruct.writer.invalid_optional_values`).
    """
    meta = volume.meta
    if meta.get("source") != "dicom":
        return []
    for key, label in DICOM_REFERENCES:
        if not str(meta.get(key) or "").strip():
            raise InputError(f"{name} has no {label}: an RTSTRUCT could not reference its images; "
                             "export the series again from the scanner or PACS")
    files = meta.get("files") or []
    return _optional_value_warnings(Path(files[0])) if files else []


def _optional_value_warnings(path: Path) -> list[str]:
    """What the RTSTRUCT writer will leave out of the first image's header, one line each."""
    from .dicom_series import read_dataset
    from .rtstruct.writer import invalid_optional_values

    try:
        header = read_dataset(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the reader has read this file already; nothing new to report
        return []
    return [f"{path.name}: {problem}; left out of the RTSTRUCT" for problem in invalid_optional_values(header)]


# ------------------------------------------------------------------ all of them
def validate_input(volume: Volume, name: str | None = None, *, modality: str | None = None,
                   models_root: str | Path | None = None) -> InputSummary:
    """Every check of this module on one image, cheapest and most specific first.

    Args:
        volume: the image as read (array (z, y, x), LPS geometry).
        name: how messages name it (default: :func:`source_name`).
        modality: the modality the model will be chosen for (default: ``volume.modality``);
            the memory estimate uses the working spacing of the installed models for it.
        models_root: folder of model directories (default: the bundled one).

    Returns:
        An :class:`InputSummary` (``verdict()`` is the one-line answer of ``series --check``).
    """
    name = name or source_name(volume)
    check_spacing_values(volume.spacing, name)
    check_position_values(volume.origin, name)
    tilt = check_direction(volume, name)
    fov = check_extent(volume, name)
    spacings = model_working_spacings(modality or volume.modality, models_root)
    need, available = check_memory(volume, name, spacings)
    check_finite_voxels(volume.array, name)
    check_not_label_map(volume.array, name)
    known = list(volume.meta.get("input_warnings") or [])
    # Listed once however often the same Volume is validated (Slicer, then the pipeline).
    new = [line for line in check_dicom_references(volume, name) if line not in known]
    if new:
        volume.meta["input_warnings"] = known + new
    return InputSummary(name, tuple(float(v) for v in fov), tilt, need, available)  # type: ignore[arg-type]
