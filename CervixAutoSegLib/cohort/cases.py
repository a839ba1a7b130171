"""Which cases a ``batch`` run segments: a dataset folder, a folder of case folders, or a folder of images.

* A **dataset** (a folder holding ``dataset.json``, :mod:`CervixAutoSegLib.dataset.manifest`): its
  cases, ids, images and label maps as the manifest lists them; the dataset's model family.
* A **folder of cases**: every sub-folder (hidden ones skipped) is a case named after it.  Its image
  is the file ``image.*`` in it (NIfTI, NRRD, MetaImage or one DICOM file), else the DICOM series in
  its ``dicom/`` folder, else the DICOM files in the folder itself (the phantom layout and a plain
  DICOM export both work).  A ``labels.*`` or ``truth.*`` label map beside it (the phantom's
  ``truth.nii.gz``) is the truth for ``--evaluate``.
* Image files (``.nii.gz``, ``.nrrd``, ...) directly in the folder are cases too, named by their stem.

Case ids name the output folders ``OUT/<case id>/``; they come from the dataset (which carries no
patient identifiers) or from the folder and file names the user chose, never from DICOM headers.
A folder that cannot be read as an image is still a case: ``segment`` reports why it fails.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import InputError

IMAGE_STEM = "image"
LABEL_STEMS = ("labels", "truth")
DICOM_FOLDER = "dicom"
RESERVED_IDS = frozenset({"evaluation", "batch.csv", "batch.json"})
"""Names of what ``batch`` writes beside the case folders (evaluation report, summary files)."""
CASE_ID_PATTERN = re.compile(r"^[^./\\][^/\\]{0,127}$")
"""A case id is one folder name: no separators, no leading dot, at most 128 characters."""


@dataclasses.dataclass(frozen=True)
class BatchCase:
    """One case of a cohort: its id, image (file or DICOM folder) and optional truth label map.

    ``truth_status``: a dataset's structure → ``matched``/``missing``/``ambiguous`` for that label
    map (None: not known; every structure counts), so a structure the truth lacks is not scored.
    """

    id: str
    image: Path
    labels: Path | None = None
    truth_status: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Cohort:
    """The cases of a batch ``INPUT`` and what the input says about them.

    ``kind`` is ``"dataset"`` or ``"folder"``; ``family`` is the dataset's model family (None for a
    folder: each image's modality chooses); ``structures`` the dataset's (empty for a folder).
    """

    root: Path
    kind: str
    cases: tuple[BatchCase, ...]
    family: str | None = None
    structures: tuple = ()


def discover_cohort(source: str | Path, out_dir: str | Path | None = None) -> Cohort:
    """The cases of ``source`` (see the module docstring), sorted by id.

    ``out_dir``: the batch output folder; when it lies inside ``source`` it is not taken for a case.

    Raises:
        InputError: ``source`` missing or not a folder, no case in it, two cases with one id.
    """
    from ..dataset.manifest import is_dataset, load_dataset

    root = Path(source).absolute()  # workers may have another working folder (or be on another host)
    if not root.exists():
        raise InputError(f"{root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: give a dataset folder or a folder of cases")
    if is_dataset(root):
        dataset = load_dataset(root)
        cases = tuple(BatchCase(case.id, case.image, case.labels, dict(case.structures) or None)
                      for case in dataset.cases)
        if not cases:
            raise InputError(f"dataset {root} lists no cases")
        return Cohort(root, "dataset", cases, dataset.family, tuple(dataset.structures))
    cases = _folder_cases(root, Path(out_dir).absolute() if out_dir is not None else None)
    if not cases:
        raise InputError(f"no cases in {root}: expected a dataset.json, case folders (each with image.*, dicom/ "
                         "or DICOM files) or image files (.nii.gz, .nrrd, .mha)")
    return Cohort(root, "folder", cases)


def _folder_cases(root: Path, out_dir: Path | None) -> tuple[BatchCase, ...]:
    """Case folders and image files directly in ``root``; InputError when two give one id."""
    from ..image_io import image_suffix

    found: dict[str, BatchCase] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or (out_dir is not None and entry.absolute() == out_dir):
            continue
        if entry.is_dir():
            case = BatchCase(entry.name, _case_image(entry), _case_labels(entry))
        elif entry.is_file() and image_suffix(entry):
            case = BatchCase(entry.name[: -len(image_suffix(entry))], entry)
        else:
            continue  # notes, spreadsheets, a dataset key file: not images
        if case.id in found:
            raise InputError(f"{root}: {found[case.id].image.name} and {entry.name} would both be case {case.id!r}; "
                             "rename one of them")
        found[case.id] = case
    return tuple(found.values())


def _case_image(folder: Path) -> Path:
    """``image.*`` (image formats first), else ``dicom/``, else the folder itself (read as DICOM)."""
    from ..image_io import image_suffix

    candidates = sorted(path for path in folder.glob(f"{IMAGE_STEM}.*") if path.is_file())
    if candidates:
        return next((path for path in candidates if image_suffix(path)), candidates[0])
    if (folder / DICOM_FOLDER).is_dir():
        return folder / DICOM_FOLDER
    return folder


def _case_labels(folder: Path) -> Path | None:
    """The truth label map of a case folder (``labels.*`` or ``truth.*`` in an image format), if any."""
    from ..image_io import image_suffix

    for stem in LABEL_STEMS:
        for path in sorted(folder.glob(f"{stem}.*")):
            if path.is_file() and image_suffix(path) and path.name[: -len(image_suffix(path))] == stem:
                return path
    return None


def unusable_id(case_id: str) -> str | None:
    """Why ``case_id`` cannot name an output folder beside the batch's own files, or None when it can."""
    if case_id in RESERVED_IDS:
        return f"case id {case_id!r} is the name of a file or folder batch writes itself; rename the case"
    if not CASE_ID_PATTERN.match(case_id):
        return f"case id {case_id!r} is not a plain folder name"
    return None
