"""Find DICOM image series in a folder and read one into a :class:`Volume`.

Reading rules (the places where DICOM readers silently go wrong):

* Slices are sorted by the projection of Image Position (Patient) on the slice normal
  (row direction x column direction of Image Orientation (Patient)) — never by file
  name, directory order or Instance Number. Array index ``k`` grows along the normal.
* All slices must share orientation, rows, columns and pixel spacing; positions must be
  distinct and evenly spaced (a gap above :data:`MISSING_SLICE_FACTOR` times the median
  step means missing slices; a slice more than :data:`NONUNIFORM_LIMIT_FRACTION` of a step off
  the grid of the others is refused, naming its file). Small jitter is tolerated and reported in
  ``meta["slice_spacing_nonuniform"]`` (max deviation from the mean step, mm); above
  :data:`NONUNIFORM_WARNING_MM` also in ``meta["input_warnings"]`` for the caller to show.
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
* Every file that looks like DICOM (Part 10 preamble, a raw dataset, or a Part 10 file that lost
  only its preamble and starts with its file meta group) is read completely or reported: a file
  cut off (an element running past the end, an image without pixel data), an image without Rows
  or Columns or without Series Instance UID, native pixel data shorter or longer than Rows x
  Columns x Bits Allocated needs (one padding byte allowed) or encapsulated under a native
  transfer syntax, and one pydicom cannot parse are each a :class:`DamagedFile`; it is attached
  to its series (or, when its series is unknown, to the series in its folder) and reading that
  series stops naming it.  Nothing vanishes: a lost last slice would otherwise shorten the
  volume without a word.
* **Every file in the folder of a series' images must be DICOM**, unless its name says it is
  something else (:data:`NOT_DICOM_NAMES` such as DICOMDIR or README, :data:`NOT_DICOM_SUFFIXES`
  such as .txt, .json, .xml, .pdf, .jpg, .db; hidden files are skipped).  Any other file there
  (an emptied slice, one cut inside its 132-byte preamble, a stray file without suffix) is an
  :class:`UnreadableFile` and reading the series stops naming it: the user removes it or exports
  the series again.  Files in folders without images are ignored (mentioned only when no series
  is found at all).
* Header numbers the geometry and the writers use (Image Position/Orientation (Patient),
  Pixel Spacing, Rescale Slope/Intercept) must be finite, and positions within
  :data:`~CervixAutoSegLib.input_checks.MAX_POSITION_MM`; the message names file and tag.
* A CT slice must have Rescale Intercept and Slope (Type 1 in the CT Image module): without
  them its Hounsfield units are unknown, so it is refused, never read as 0 and 1.
* Stored pixel values must fit in Bits Stored: pydicom keeps only those bits, which would
  change the image without a word, so such a slice is refused.
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
from .input_checks import IN_PLANE_COSINE_TOLERANCE, check_position_values, check_spacing_values
from .mr_weighting import Weighting, mr_weighting
from .volume import Volume

log = logging.getLogger(__name__)

SUPPORTED_MODALITIES = ("CT", "MR")
MEDIA_STORAGE_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
"""SOP Class UID of a DICOMDIR (not an image)."""

ORIENTATION_TOLERANCE = 1e-4
"""Max difference of direction cosines for two slices to count as parallel."""
IOP_UNIT_TOLERANCE = IN_PLANE_COSINE_TOLERANCE
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
NONUNIFORM_WARNING_MM = 0.1
"""Warn when a slice lies further than this off the uniform grid: Image Position (Patient) rounded
to 0.1 mm (some scanners) moves a slice by at most 0.09 mm, anything more is the slice itself."""
NONUNIFORM_LIMIT_FRACTION = 0.25
"""Refuse a slice lying more than this fraction of a step off the uniform grid of the others: the
volume would put its voxels a quarter slice or more from where they were imaged."""
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
    damaged: list["DamagedFile"] = dataclasses.field(default_factory=list)
    """Files of this series (or of its folder, when the cut hid their series) that cannot be read completely."""
    headers: list[tuple[Path, Any]] | None = dataclasses.field(default=None, repr=False, compare=False)
    """(path, header with pixel data deferred) of each file as the scan read them, kept only by
    ``scan_series(..., keep_headers=True)`` for a read that follows at once; None: read again."""

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
RAW_FIRST_ELEMENT_MAX = 0x0018
"""The first element of a raw dataset is one of (0008,0000)..(0008,0018) (group length, character
set, image type, creation date/time, SOP Class/Instance UID): a stricter test than the group
alone, so that an unrelated binary file is not taken for a damaged DICOM one."""
FILE_META_START = b"\x02\x00"
"""Little-endian group 0x0002: a Part 10 file that lost only its 128-byte preamble and "DICM"
starts with its file meta group, which pydicom reads when forced."""
FILE_META_FIRST_ELEMENT_MAX = 0x0010
"""Its first element is one of (0002,0000)..(0002,0010) (group length, version, SOP Class/Instance,
Transfer Syntax)."""
NOT_DICOM_NAMES = frozenset({"DICOMDIR", "README", "READ.ME", "LICENSE", "LICENCE", "COPYING", "VERSION",
                             "THUMBS.DB", "DESKTOP.INI", "AUTORUN.INF", "LOCKFILE"})
"""File names (upper case) that are never images: a DICOMDIR, a CD's readme and index files."""
NOT_DICOM_SUFFIXES = frozenset({
    ".txt", ".md", ".rtf", ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".csv", ".tsv", ".json", ".xml", ".xsl",
    ".dtd", ".htm", ".html", ".css", ".js", ".yaml", ".yml", ".ini", ".inf", ".cfg", ".log", ".db",
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".ico", ".svg",
    ".zip", ".gz", ".bz2", ".xz", ".7z", ".tar", ".md5", ".sha1", ".sha256", ".sig",
    ".exe", ".dll", ".jar", ".bat", ".cmd", ".sh", ".py", ".mat",
    ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".vtk", ".stl",
})
"""Suffixes (lower case) of files that are known not to be DICOM: documents, reports, viewers'
files, pictures, archives, checksums and other image formats.  A file in the folder of a series
whose content is not DICOM and whose name is not of this kind is reported (see
:class:`UnreadableFile`): it may be a slice cut or emptied by a failed copy."""
PREAMBLE_LENGTH = 128
SCAN_DEFER_BYTES = 64 * 1024
"""While scanning, values larger than this (pixel data) are skipped, not read: their declared
length is all the completeness check needs."""
UNDEFINED_LENGTH = 0xFFFFFFFF
BITS_PER_BYTE = 8
PIXEL_DATA_TAG = 0x7FE00010


@dataclasses.dataclass(frozen=True)
class DamagedFile:
    """A file that looks like DICOM but cannot be read completely (cut off, corrupt)."""

    path: Path
    reason: str
    series_instance_uid: str = ""
    """Its series when the header got that far, else ''."""

    def message(self) -> str:
        return f"damaged DICOM file {self.path}: {self.reason}; copy or export the series again"


@dataclasses.dataclass(frozen=True)
class UnreadableFile(DamagedFile):
    """A file beside the images of a series that is not recognisably DICOM and not of a known
    other kind (:data:`NOT_DICOM_NAMES`, :data:`NOT_DICOM_SUFFIXES`): an emptied slice, one cut
    inside its preamble, or something foreign the user should move out of the folder."""

    def message(self) -> str:
        """One line naming the file and what to do: export again if it is a slice, else move it away."""
        return (f"unreadable file {self.path} among the images of the series: {self.reason}; if it is one of "
                "its slices, copy or export the series again, else move it out of the folder")


def is_known_non_dicom(path: Path) -> bool:
    """True for a file whose name says it is not an image (:data:`NOT_DICOM_NAMES`, :data:`NOT_DICOM_SUFFIXES`)."""
    return path.name.upper() in NOT_DICOM_NAMES or path.suffix.lower() in NOT_DICOM_SUFFIXES


def _unreadable(path: Path) -> UnreadableFile | None:
    """An :class:`UnreadableFile` for a non-DICOM file whose name does not say what else it is, else None."""
    if is_known_non_dicom(path):
        return None
    try:
        size = path.stat().st_size
    except OSError as error:
        return UnreadableFile(path, f"it cannot be read ({_one_line(error)})")
    if size == 0:
        return UnreadableFile(path, "it is empty (0 bytes)")
    return UnreadableFile(path, f"its {size} bytes hold no DICOM preamble or data set")


def has_part10_preamble(path: Path) -> bool:
    """Whether ``path`` starts as a DICOM Part 10 file: 128-byte preamble, then "DICM" (OSError if unreadable)."""
    with open(path, "rb") as stream:
        return stream.read(PREAMBLE_LENGTH + 4)[PREAMBLE_LENGTH:] == b"DICM"


def _looks_like_raw_dataset(path: Path) -> bool:
    """A dataset without the Part 10 preamble: a bare dataset (group 0008 first), or a Part 10
    file that lost only its preamble and "DICM" (file meta group 0002 first)."""
    with open(path, "rb") as stream:
        head = stream.read(4)
    if len(head) != 4:
        return False
    element = int.from_bytes(head[2:], "little")
    return ((head[:2] == RAW_DATASET_START and element <= RAW_FIRST_ELEMENT_MAX)
            or (head[:2] == FILE_META_START and element <= FILE_META_FIRST_ELEMENT_MAX))


def read_dataset(path: Path, *, stop_before_pixels: bool = False, defer_size: int | None = None):
    """Read a Part 10 file, or a raw dataset without preamble (only when it starts like one)."""
    import pydicom

    force = not has_part10_preamble(path) and _looks_like_raw_dataset(path)
    with _quiet_pydicom():
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=force, defer_size=defer_size)
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


def _read_header(path: Path) -> Any:
    """The dataset of ``path`` (pixel data deferred), a :class:`DamagedFile`, or None when it is not DICOM."""
    if not (has_part10_preamble(path) or _looks_like_raw_dataset(path)):
        return None
    try:
        ds = read_dataset(path, defer_size=SCAN_DEFER_BYTES)
    except OSError as error:
        return DamagedFile(path, f"cannot be read ({_one_line(error)})")
    except Exception as error:  # noqa: BLE001 — malformed elements raise many types
        return DamagedFile(path, f"pydicom cannot parse it ({_one_line(error)})")
    if len(ds) == 0:
        return _empty_dataset(path)
    reason = _damage(ds, path)
    if reason:
        return DamagedFile(path, reason, _text(ds, "SeriesInstanceUID"))
    return ds


def _empty_dataset(path: Path) -> DamagedFile:
    """Why pydicom found no element: a cut before the first one, or an undefined-length value
    (encapsulated pixel data) without its end, for which pydicom drops the whole dataset."""
    size = path.stat().st_size
    try:
        header = read_dataset(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 — as unreadable as before
        header = None
    if header is not None and len(header):
        return DamagedFile(path, f"its pixel data is cut off (the file ends after {size} bytes)",
                           _text(header, "SeriesInstanceUID"))
    return DamagedFile(path, f"the file ends after {size} bytes, before any data element")


def _raw_element(ds, tag: int):
    """The element as read from the file (declared length, file offset), without loading a deferred value."""
    try:
        return ds.get_item(tag, keep_deferred=True)
    except TypeError:  # pragma: no cover - pydicom 2.4 has no keep_deferred (and reads the value)
        return ds.get_item(tag)


def _damage(ds, path: Path) -> str | None:
    """Why a parsed dataset is not a complete DICOM object, or None when it is.

    pydicom returns what it could parse of a cut file without complaint; a complete file ends
    with its last element's value, an image has its pixel data, and pixel data has Rows and
    Columns and (when native) the length they need.
    """
    size = path.stat().st_size
    last = _raw_element(ds, max(ds.keys()))
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", UNDEFINED_LENGTH)
    if tell is not None and length != UNDEFINED_LENGTH and tell + length > size:
        return f"the file ends after {size} bytes, inside {_tag_label(last.tag)} which needs {tell + length}"
    if PIXEL_DATA_TAG not in ds:
        if _is_image_object(ds):
            return f"an image without pixel data (the file ends after {size} bytes)"
        return None
    missing = [label for keyword, label in (("Rows", "Rows (0028,0010)"), ("Columns", "Columns (0028,0011)"))
               if keyword not in ds]
    if missing:  # pixel data without its size: skipped as "not an image", it would silently lose a slice
        return f"an image without {' and '.join(missing)}"
    return _pixel_data_length_problem(ds)


def _tag_label(tag: int) -> str:
    """``"Pixel Data (7FE0,0010)"``: the name users find in a DICOM viewer, and the tag."""
    from pydicom.datadict import dictionary_description
    from pydicom.tag import Tag

    try:
        return f"{dictionary_description(tag)} {Tag(tag)}"
    except KeyError:  # private or unknown tag
        return str(Tag(tag))


def _is_image_object(ds) -> bool:
    """An image by its size tags or its SOP Class (e.g. "CT Image Storage"), whichever survived a cut."""
    from pydicom.uid import UID

    if "Rows" in ds or "Columns" in ds:
        return True
    meta = getattr(ds, "file_meta", None)
    sop_class = _text(ds, "SOPClassUID") or str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
    return bool(sop_class) and "Image Storage" in UID(sop_class).name


def _pixel_data_length_problem(ds) -> str | None:
    """For native (uncompressed) pixel data: a message when it holds fewer or more bytes than the
    image needs (one padding byte to an even length allowed), or is encapsulated (undefined length)
    under a native transfer syntax.

    Too many bytes mean Rows, Columns or Bits Allocated are wrong, or compressed frames were
    relabelled native: pydicom would silently re-wrap them into a wrong image.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    length = getattr(_raw_element(ds, PIXEL_DATA_TAG), "length", UNDEFINED_LENGTH)
    if syntax is None or syntax.is_compressed:
        return None  # encapsulated: the decoder reports a damaged codestream when the series is read
    if length == UNDEFINED_LENGTH:
        return (f"its pixel data is encapsulated (compressed) but its transfer syntax {syntax.name} says "
                "native: the image cannot be decoded reliably")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits, samples = int(ds.BitsAllocated), int(_float(ds, "SamplesPerPixel") or 1)
        frames = _frame_count(ds)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None  # the size tags themselves are broken: reading the pixels names that
    needed = -(-rows * columns * samples * frames * bits // BITS_PER_BYTE)  # whole bytes (1-bit images round up)
    if length < needed or length > needed + 1:
        return (f"its pixel data holds {length} bytes, {rows}x{columns} pixels of {bits} bits "
                f"({frames} frame(s)) need {needed}")
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


def _frame_count(ds) -> int:
    """Number Of Frames, 1 when absent or not a usable count (the pixel decoder then has the last word)."""
    frames = _float(ds, "NumberOfFrames")
    return int(frames) if frames is not None and np.isfinite(frames) and frames >= 1 else 1


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


def _scan(paths: Iterable[Path]) -> tuple[dict[str, list[tuple[Path, Any]]], list[DamagedFile]]:
    """Headers of every DICOM image file under ``paths``, grouped by Series Instance UID, and the damaged files."""
    groups: dict[str, list[tuple[Path, Any]]] = {}
    damaged: list[DamagedFile] = []
    seen_instances: set[str] = set()
    for path in _iter_files(paths):
        ds = _read_header(path)
        if ds is None:
            ds = _unreadable(path)  # not DICOM: named when it lies among a series' images
        elif not isinstance(ds, DamagedFile) and _is_image(ds) and not _text(ds, "SeriesInstanceUID"):
            # A series needs its UID (the RTSTRUCT references it): never group such files by folder.
            ds = DamagedFile(path, "an image without Series Instance UID (0020,000E)")
        if isinstance(ds, DamagedFile):
            log.debug("%s", ds.message())
            damaged.append(ds)
            continue
        if ds is None or not _is_image(ds):
            continue
        instance = _text(ds, "SOPInstanceUID")
        if instance and instance in seen_instances:
            # The same image copied twice (e.g. two exports in one tree) is one slice.
            log.debug("skipping %s: SOP instance %s already seen", path, instance)
            continue
        seen_instances.add(instance)
        groups.setdefault(_text(ds, "SeriesInstanceUID"), []).append((path, ds))
    return groups, damaged


def _info(uid: str, members: list[tuple[Path, Any]], keep_headers: bool = False) -> SeriesInfo:
    first = members[0][1]
    modality = _text(first, "Modality").upper()
    frames = _frame_count(first)
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
        headers=list(members) if keep_headers else None,
    )


def _median_step(members: list[tuple[Path, Any]]) -> float | None:
    """Median spacing along the first slice's normal, from headers only (listing, no checks)."""
    iop = _floats(getattr(members[0][1], "ImageOrientationPatient", None))
    if iop is None or len(iop) != 6 or not all(np.isfinite(iop)):
        return None
    normal = np.cross(iop[:3], iop[3:])
    along = []
    for _, ds in members:
        position = _floats(getattr(ds, "ImagePositionPatient", None))
        if position is not None and len(position) == 3 and all(np.isfinite(position)):
            along.append(float(np.dot(position, normal)))
    steps = np.diff(np.unique(np.round(along, 3)))
    return float(np.median(steps)) if steps.size else None


@dataclasses.dataclass
class SeriesScan:
    """What :func:`scan_series` found: the image series, and damaged files that belong to none of them."""

    series: list[SeriesInfo]
    unattached: list[DamagedFile]

    def check_found(self, where: str) -> None:
        """InputError when no series was found: naming a damaged file if there is one."""
        if self.series:
            return
        # A damaged DICOM file explains "no series" better than a file that may be anything.
        damaged = [file for file in self.unattached if not isinstance(file, UnreadableFile)]
        if damaged:
            extra = f" ({len(damaged) - 1} more damaged files)" if len(damaged) > 1 else ""
            raise InputError(f"no DICOM image series found in {where}: {damaged[0].message()}{extra}")
        if self.unattached:
            first = self.unattached[0]
            extra = f" ({len(self.unattached) - 1} more such files)" if len(self.unattached) > 1 else ""
            raise InputError(f"no DICOM image series found in {where}: {first.path} is not DICOM, "
                             f"{first.reason}{extra}")
        raise InputError(f"no DICOM image series found in {where}")


def _attach(infos: list[SeriesInfo], damaged: list[DamagedFile]) -> list[DamagedFile]:
    """Give each damaged file to its series (by UID, else to the series in its folder); returns the rest."""
    unattached = []
    for file in damaged:
        if file.series_instance_uid:
            owners = [info for info in infos if info.series_instance_uid == file.series_instance_uid]
        else:  # cut before Series Instance UID: it may belong to any series beside it
            owners = [info for info in infos if any(path.parent == file.path.parent for path in info.files)]
        for info in owners:
            info.damaged.append(file)
        if not owners:
            unattached.append(file)
    return unattached


def scan_series(folder: Path | str | Sequence[Path | str], *, keep_headers: bool = False) -> SeriesScan:
    """Every DICOM image series under ``folder`` (recursive), with the damaged files found on the way.

    Series are sorted by modality, number and description; see :func:`find_series`.
    ``keep_headers``: each series keeps the headers read (:attr:`SeriesInfo.headers`), so that
    :func:`read_series_files` right after does not parse every file a second time.
    """
    paths = [Path(p) for p in folder] if isinstance(folder, (list, tuple)) else [Path(folder)]
    groups, damaged = _scan(paths)
    infos = [_info(uid, members, keep_headers) for uid, members in groups.items()]
    infos.sort(key=lambda info: (info.modality, info.series_number, info.description, info.series_instance_uid))
    return SeriesScan(infos, _attach(infos, damaged))


def find_series(folder: Path | str | Sequence[Path | str]) -> list[SeriesInfo]:
    """Every DICOM image series under ``folder`` (recursive), sorted by modality and description.

    Non-DICOM files, DICOMDIR and non-image objects (RTSTRUCT, RTPLAN, SR...) are ignored.
    ``folder`` may also be a file or a list of files/folders.  Damaged files are listed in
    each series' ``damaged`` (see :func:`scan_series` for those that belong to none).
    """
    return scan_series(folder).series


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


def _header_numbers(ds, path: Path, keyword: str, count: int, what: str) -> np.ndarray | None:
    """The ``count`` numbers of ``keyword`` (None when absent); InputError naming file and tag when
    they are not ``count`` finite numbers ("nan", "inf", text): geometry and writers need them all."""
    raw = getattr(ds, keyword, None)
    if raw is None or raw == "":
        return None
    values = _floats(raw)
    if values is None or len(values) != count or not all(np.isfinite(values)):
        shown = _text(ds, keyword) or str(raw)
        raise InputError(f"{path.name} has an invalid {what} ({keyword}) '{shown}': it needs {count} finite "
                         f"number(s); fix or export the series again")
    return np.asarray(values, dtype=np.float64)


def _orientation(ds, path: Path) -> np.ndarray:
    iop = _header_numbers(ds, path, "ImageOrientationPatient", 6, "Image Orientation (Patient)")
    if iop is None:
        raise InputError(f"{path.name} has no Image Orientation (Patient): cannot place it in space")
    row, column = iop[:3], iop[3:]
    lengths = np.array([np.linalg.norm(row), np.linalg.norm(column)])
    if np.any(np.abs(lengths - 1) > IOP_UNIT_TOLERANCE) or abs(np.dot(row, column)) > IOP_UNIT_TOLERANCE:
        raise InputError(
            f"{path.name} has an invalid Image Orientation (Patient) {iop.tolist()}: "
            "row and column must be perpendicular unit vectors"
        )
    return np.concatenate([row / lengths[0], column / lengths[1]])


def _position(ds, path: Path) -> np.ndarray:
    """Image Position (Patient) in LPS mm: three finite numbers within reach of a scanner, else InputError."""
    ipp = _header_numbers(ds, path, "ImagePositionPatient", 3, "Image Position (Patient)")
    if ipp is None:
        raise InputError(f"{path.name} has no Image Position (Patient): cannot place it in space")
    return check_position_values(ipp, path.name, "Image Position (Patient) (ImagePositionPatient)")


def _pixel_spacing(ds, path: Path) -> np.ndarray:
    keyword = "PixelSpacing" if _text(ds, "PixelSpacing") else "ImagerPixelSpacing"
    spacing = _header_numbers(ds, path, keyword, 2, "Pixel Spacing")
    if spacing is None:
        raise InputError(f"{path.name} has no valid Pixel Spacing")
    return check_spacing_values(spacing, path.name, f"Pixel Spacing ({keyword})")


def _single_slice_spacing(ds, path: Path) -> float:
    """Slice spacing of a lone image: Spacing Between Slices, else Slice Thickness, else the default."""
    for keyword, what in (("SpacingBetweenSlices", "Spacing Between Slices"), ("SliceThickness", "Slice Thickness")):
        value = _header_numbers(ds, path, keyword, 1, what)
        if value is not None:
            return float(check_spacing_values(value, path.name, f"{what} ({keyword})")[0])
    return DEFAULT_SINGLE_SLICE_SPACING_MM


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
    _check_evenly_spaced(positions, names)
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


def _check_evenly_spaced(positions: np.ndarray, names: Sequence[str]) -> None:
    """InputError naming the slice furthest off the uniform grid of the others, when it is off by
    more than :data:`NONUNIFORM_LIMIT_FRACTION` of a step.

    The grid is fitted robustly (median step and offset), so one displaced file is the one named,
    even the first or the last; a whole step missing is on the grid, and left to the gap check.
    """
    k = np.arange(len(positions))[:, np.newaxis]
    step = np.median(np.diff(positions, axis=0), axis=0)
    step_mm = float(np.linalg.norm(step))
    residual = positions - (np.median(positions - k * step, axis=0) + k * step)
    along = residual @ (step / step_mm)
    off_grid = along - np.round(along / step_mm) * step_mm
    sideways = residual - along[:, np.newaxis] * (step / step_mm)
    deviations = np.hypot(off_grid, np.linalg.norm(sideways, axis=1))
    worst = int(np.argmax(deviations))
    limit = NONUNIFORM_LIMIT_FRACTION * step_mm
    if deviations[worst] > limit:
        raise InputError(
            f"slices are not evenly spaced: {names[worst]} lies {deviations[worst]:.2f} mm off the "
            f"{step_mm:.2f} mm grid of the others (more than {limit:.2f} mm); the series mixes slice "
            "spacings or a position is wrong"
        )


# ----------------------------------------------------------------- pixels
def _pixels(path: Path, ds: Any = None) -> tuple[np.ndarray, Any]:
    """(rows, columns) stored pixel values and the dataset of one file: ``ds``, its header as read
    with the pixel data deferred (pydicom reads the element from the file on access), or None to
    read the whole file."""
    try:
        ds = read_dataset(path) if ds is None else ds
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
        if "deferred read" in str(error).lower():  # pydicom went back to the file for the pixels
            raise InputError(f"{path} changed or disappeared while the series was being read; copy or export "
                             "the series again and rerun") from error
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise InputError(f"cannot decode pixel data of {path} (transfer syntax {name}): {_one_line(error)}") from error
    if array.ndim != 2:
        raise InputError(
            f"{path} holds {array.shape[0]} frames: multi-frame (enhanced) images are not supported, "
            "export the series as one file per slice"
        )
    _check_bits_stored(ds, path, array)
    return array, ds


def _stored_values(ds, array: np.ndarray) -> np.ndarray:
    """The stored values as written in the file, before pydicom masks them to Bits Stored.

    Native pixel data is viewed directly (Bits Allocated 8/16/32, Pixel Representation, byte
    order of the transfer syntax); for compressed data only the decoder's output is available.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    allocated = int(ds.BitsAllocated)
    if syntax is None or syntax.is_compressed or allocated not in (8, 16, 32):
        return array
    kind = "i" if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1 else "u"
    order = "<" if syntax.is_little_endian else ">"
    count = int(array.size)
    return np.frombuffer(bytes(ds.PixelData), dtype=f"{order}{kind}{allocated // BITS_PER_BYTE}", count=count)


def _check_bits_stored(ds, path: Path, array: np.ndarray) -> None:
    """InputError when stored values do not fit in Bits Stored.

    pydicom keeps only the low Bits Stored bits (and sign-extends them), so such a slice would
    silently get other values, e.g. -1000 HU turned into +24 HU with Bits Stored 8.  Bits Stored
    must describe the values (a few retired exports hid overlays in the high bits: refused too).
    """
    try:
        stored, allocated = int(ds.BitsStored), int(ds.BitsAllocated)
        values = _stored_values(ds, array)
    except (AttributeError, TypeError, ValueError):
        return  # pydicom decoded it, so the tags were usable; nothing more to compare against
    if not values.size or stored >= allocated:
        return
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    low, high = (-(2 ** (stored - 1)), 2 ** (stored - 1) - 1) if signed else (0, 2 ** stored - 1)
    smallest, largest = int(values.min()), int(values.max())
    if smallest < low or largest > high:
        raise InputError(
            f"{path.name} stores values {smallest}..{largest}, which do not fit in its Bits Stored (0028,0101) "
            f"{stored} ({low}..{high}): a reader would cut their high bits and change the image; "
            "export the series again"
        )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _rescale(ds, path: Path) -> tuple[float, float]:
    """(slope, intercept) of the stored → output values; InputError for non-finite values or slope 0."""
    slope = _header_numbers(ds, path, "RescaleSlope", 1, "Rescale Slope")
    intercept = _header_numbers(ds, path, "RescaleIntercept", 1, "Rescale Intercept")
    if slope is not None and slope[0] == 0:
        raise InputError(f"{path.name} has Rescale Slope (RescaleSlope) 0, which makes every pixel the same value; "
                         "fix or export the series again")
    return (1.0 if slope is None else float(slope[0])), (0.0 if intercept is None else float(intercept[0]))


def _to_output_values(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply the per-slice rescale to ``stored`` (z, y, x).

    Returns the stored array itself for an identity rescale, int16 when the result is
    exact and fits (CT in HU), float32 otherwise. Works slice by slice so a large
    series never needs a 64-bit copy. 16-bit stored values are rescaled in place (``stored`` is
    the reader's own array): a 100-slice CT then needs no second 52 MB of fresh memory.
    """
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0):
        return stored
    if stored.size and np.all(slopes == 1.0) and np.all(intercepts == np.round(intercepts)):
        low = int(stored.min()) + int(intercepts.min())
        high = int(stored.max()) + int(intercepts.max())
        if np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max:
            # 16-bit arithmetic modulo 2**16 is exact here because every result fits int16 (checked
            # above), so uint16 stored values may be read as int16; 8x faster than widening to int32.
            source = stored.view(np.int16) if stored.dtype.itemsize == 2 else stored
            values = source if source.dtype == np.int16 else np.empty(stored.shape, np.int16)
            for k, intercept in enumerate(intercepts):
                np.add(source[k], np.int16(intercept), out=values[k], casting="unsafe")
            return values
    values = np.empty(stored.shape, np.float32)
    for k, (slope, intercept) in enumerate(zip(slopes, intercepts)):
        values[k] = stored[k].astype(np.float64) * slope + intercept
    return values


# ----------------------------------------------------------------- reading
def _read_pixels(members: Sequence[tuple[Path, Any]], size: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored values (z, y, x) of ``members`` ((path, header with deferred pixel data)) in order, with
    per-slice rescale slopes and intercepts.  Each header's pixel data is let go once copied: parsing
    every file a second time for its pixels cost 0.1-0.2 s per 100 slices."""
    stored: np.ndarray | None = None
    slopes, intercepts = np.ones(len(members)), np.zeros(len(members))
    for k, (path, header) in enumerate(members):
        try:
            array, ds = _pixels(path, header)
        finally:
            if "PixelData" in header:
                del header["PixelData"]  # deleting it (not pop) also drops pydicom's cached array
        if array.shape != size:
            raise InputError(f"pixel data of {path} is {array.shape[0]}x{array.shape[1]}, header says {size[0]}x{size[1]}")
        if stored is None:
            stored = np.empty((len(members), *size), array.dtype)
        elif not np.can_cast(array.dtype, stored.dtype, "safe"):
            # Signed and unsigned slices in one series: widen instead of wrapping.
            stored = stored.astype(np.result_type(stored.dtype, array.dtype))
        stored[k] = array
        slopes[k], intercepts[k] = _rescale(ds, path)
    assert stored is not None  # a series has at least one file
    return stored, slopes, intercepts


def _read_members(info: SeriesInfo) -> list[tuple[Path, Any]]:
    """(path, header) of every file of ``info``, each checked again: read again (files may change
    after the scan) unless the scan kept its headers for this read (:attr:`SeriesInfo.headers`)."""
    headers, info.headers = info.headers, None  # used once: the pixel data is let go as it is read
    members = []
    for path, ds in headers or ((path, _read_header(path)) for path in info.files):
        if isinstance(ds, DamagedFile):  # changed since the scan
            raise InputError(ds.message())
        if ds is None:
            raise InputError(f"cannot read DICOM file {path}")
        if not _text(ds, "SeriesInstanceUID"):  # a caller may have grouped files by folder (dataset import)
            raise InputError(DamagedFile(path, "an image without Series Instance UID (0020,000E)").message())
        if _frame_count(ds) > 1:
            raise InputError(
                f"{path} holds {_frame_count(ds)} frames: multi-frame (enhanced) images are not "
                "supported, export the series as one file per slice"
            )
        if info.modality == "CT":
            _check_ct_rescale(ds, path)
        members.append((path, ds))
    return members


def _check_ct_rescale(ds, path: Path) -> None:
    """Rescale Intercept and Slope are Type 1 in the CT Image module: without them the Hounsfield
    units are unknown (stored values are often offset by 1024), so a CT slice lacking either is
    refused instead of read as 0 and 1."""
    for keyword, label in (("RescaleIntercept", "Rescale Intercept (0028,1052)"),
                           ("RescaleSlope", "Rescale Slope (0028,1053)")):
        if not _text(ds, keyword):
            raise InputError(f"{path.name} is a CT image without {label}, which CT images must have: its "
                             "Hounsfield units are unknown; export the series again from the scanner or PACS")


def _series_meta(info: SeriesInfo, members: list[tuple[Path, Any]], geometry: _SliceGeometry,
                 slopes: np.ndarray, intercepts: np.ndarray, t2: bool | None) -> dict:
    """``Volume.meta`` of a series read from DICOM (identity, files, geometry facts, warnings)."""
    first = members[0][1]
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
    if geometry.nonuniform_mm > NONUNIFORM_WARNING_MM:
        # Not a log warning here: a later refusal of the same input must stay the only line on
        # stderr.  Whoever accepts the volume shows it (load_input logs it, series --check prints it).
        meta["input_warnings"] = [f"slice positions deviate up to {geometry.nonuniform_mm:.3f} mm from a "
                                  "uniform grid"]
        log.info("%s", meta["input_warnings"][0])
    return meta


def read_series_files(info: SeriesInfo, *, t2: bool | None = None) -> Volume:
    """Read the files of one series (as found by :func:`find_series`) into a Volume.

    Returns a Volume with ``array`` (z, y, x) = (slice, row, column), k growing along the
    slice normal, geometry in LPS mm. See the module docstring for the rules.
    """
    _check_supported(info)
    if info.damaged:
        extra = f" ({len(info.damaged) - 1} more damaged files)" if len(info.damaged) > 1 else ""
        raise InputError(info.damaged[0].message() + extra)
    members = _read_members(info)
    iop, pixel_spacing = _check_consistent(members)
    normal = np.cross(iop[:3], iop[3:])
    members.sort(key=lambda member: float(np.dot(_position(member[1], member[0]), normal)))
    positions = np.array([_position(ds, path) for path, ds in members])
    first_path, first = members[0]
    single_spacing = _single_slice_spacing(first, first_path) if len(members) == 1 else DEFAULT_SINGLE_SLICE_SPACING_MM
    geometry = _stack_geometry(positions, iop, pixel_spacing, [p.name for p, _ in members], single_spacing)

    stored, slopes, intercepts = _read_pixels(members, (int(first.Rows), int(first.Columns)))
    values = _to_output_values(stored, slopes, intercepts)
    return Volume(
        array=values, spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction,
        modality=info.modality, meta=_series_meta(info, members, geometry, slopes, intercepts, t2),
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
    scan = scan_series(paths, keep_headers=True)  # read at once: the headers are not parsed twice
    scan.check_found(where)
    info = choose_series(scan.series, series_uid=series_uid, modality=modality, t2=t2, preferred=preferred,
                         where=where)
    return read_series_files(info, t2=t2)
