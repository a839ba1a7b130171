"""``cervixautoseg export-rtstruct``: a label map on a DICOM series → DICOM RTSTRUCT."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

HELP = "write a DICOM RTSTRUCT from a label map (NIfTI/NRRD) on a DICOM image series"

log = logging.getLogger(__name__)

LABELS_JSON = "labels.json"
GRID_TOLERANCE_MM = 1e-3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dicom", type=Path, required=True, help="folder of the image series the labels are on")
    parser.add_argument("--labels", type=Path, required=True,
                        help="label map (.nii/.nii.gz/.nrrd) on exactly the DICOM grid; a labels.json next to "
                             "it gives names, colours and codes")
    parser.add_argument("--out", type=Path, required=True, help="RTSTRUCT file to write")
    parser.add_argument("--series", help="Series Instance UID when the folder holds several series")
    parser.add_argument("--model", type=str.lower, metavar="FAMILY",
                        help="model family whose structures the labels are, when there is no labels.json "
                             "(default: the family registered for the image's modality)")
    parser.add_argument("--keyhole", action="store_true",
                        help="join holes to their outer contour (for planning systems that want keyholes)")


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..dicom_series import read_dicom_series
    from ..errors import InputError
    from ..outputs import check_output_file
    from ..rtstruct import organ_tumour_containment, write_rtstruct

    check_output_file(args.out, "--out", example="rtstruct.dcm")  # before reading: a bad --out costs one line
    if not args.dicom.is_dir():
        raise InputError(f"--dicom {args.dicom} is not a folder")
    reference = read_dicom_series(args.dicom, series_uid=args.series)
    _check_referable(args.dicom, reference)
    labels = load_label_map(args.labels, reference.modality)
    _check_same_grid(args.labels, labels, reference)
    model, structures = structures_for_labels(args.labels, args.model, reference.modality)
    present = {int(v) for v in set(labels.array.ravel().tolist()) if v}
    unnamed = sorted(present - {s.value for s in structures})
    if unnamed:
        log.warning("label values %s have no structure definition and are not exported", unnamed)
    # Organ-then-tumour (MR) models paint the tumour over the organ; the organ ROI must
    # still cover it.  Same rule as `segment`, so both write the same RTSTRUCT.
    containment = organ_tumour_containment(structures) or None
    write_rtstruct(args.out, labels, reference, structures, model_name=model, model_version=__version__,
                   containment=containment, keyhole=args.keyhole)
    print(f"wrote {args.out} ({len(structures)} ROIs) referencing series {reference.meta.get('series_instance_uid')}")
    return 0


REFERENCED_UIDS = {"series_instance_uid": "Series Instance UID", "study_instance_uid": "Study Instance UID",
                   "frame_of_reference_uid": "Frame of Reference UID"}
"""UIDs of the image series an RTSTRUCT refers to (``Volume.meta`` key → DICOM name)."""


UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
"""A UID as scanners write them: digits and dots.  Deliberately laxer than the standard (which forbids
leading zeros in a component): some scanners write those, and planning systems accept them."""
UID_MAX_CHARS = 64


def _check_referable(folder: Path, reference) -> None:
    """InputError unless the series' own UIDs look like UIDs: the reader labels a series without
    Series Instance UID with a placeholder, which must not end up in an RTSTRUCT as its reference."""
    from ..errors import InputError

    for key, name in REFERENCED_UIDS.items():
        value = str(reference.meta.get(key) or "")
        if len(value) > UID_MAX_CHARS or not UID_PATTERN.fullmatch(value):
            raise InputError(f"--dicom {folder}: the images carry no valid {name}, which an RTSTRUCT must "
                             "refer to; export the series again")


def _check_same_grid(path: Path, labels, reference) -> None:
    """One-line :class:`~CervixAutoSegLib.errors.GridMismatchError` summarising both grids unless the
    label map lies on the series' grid (every corner voxel within :data:`GRID_TOLERANCE_MM`)."""
    from ..errors import GridMismatchError
    from ..rtstruct.writer import grid_offset_mm

    offset = grid_offset_mm(labels, reference)
    if offset <= GRID_TOLERANCE_MM:
        return
    hint = "export the labels on the image grid"
    if not reference.is_orthogonal and path.name.lower().endswith((".nii", ".nii.gz")):
        # ITK coerces a NIfTI direction to orthogonal, so a tilted grid cannot survive it.
        hint = "this series has gantry tilt, which NIfTI cannot store: save the labels as .nrrd"
    where = "" if offset == float("inf") else f", off by up to {offset:.3g} mm"
    raise GridMismatchError.between(
        f"--labels {path} and the DICOM series are not on the same voxel grid{where}",
        {"labels": labels, "series": reference}, hint)


def load_label_map(path: Path, modality: str = ""):
    """An integer label map (NIfTI or NRRD) as a uint8 Volume; one-line InputError otherwise."""
    import numpy as np

    from ..errors import InputError
    from ..image_io import load_image

    if not path.is_file():
        raise InputError(f"--labels {path} does not exist or is not a file")
    # The modality is passed on so that the reader does not guess it from label values.
    volume = load_image(path, modality=modality or None)
    array = volume.array
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.all(np.isfinite(array)) and np.all(array == np.round(array))
    )
    if not integral:
        raise InputError(f"{path} holds non-integer values; a label map must hold label values 0, 1, 2, ...")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.uint8).max):
        raise InputError(f"{path} holds label values outside 0-255")
    return volume.with_array(array.astype(np.uint8))


def structures_for_labels(labels_path: Path, model: str | None, modality: str):
    """(model name, structures): from labels.json next to the labels, else the family's defaults."""
    from ..errors import InputError
    from ..families import family_for_modality, get_family
    from ..structures import structures_from_json

    document_path = labels_path.parent / LABELS_JSON
    if document_path.is_file():
        try:
            document = json.loads(document_path.read_text(encoding="utf-8"))
            return str(document.get("model", "unknown")), structures_from_json(document)
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{document_path} is not a valid labels.json: {error}") from None
    family = get_family(model) if model else family_for_modality(modality)
    if family is None:
        raise InputError(f"no model family contours {modality or 'unknown'!r} images; pass --model FAMILY")
    return family.name, family.structures
