"""The dataset folder's manifest (``DATASET/dataset.json``): read, check and write it.

A dataset folder, as ``cervixautoseg dataset import`` writes it and ``train``, ``evaluate`` and
``batch`` read it::

    DATASET/dataset.json               this manifest
    DATASET/case-0001/image.nii.gz     the image, its exact grid (array (z, y, x), LPS)
    DATASET/case-0001/labels.nii.gz    uint8 label map on that grid (the family's label values)
    DATASET/case-0001/labels.json      names, colours and codes of those values

``dataset.json``::

    {"format_version": 1, "kind": "cervixautoseg-dataset", "family": "ct",
     "structures": [{"value": 1, "name": "Bladder", ...}, ...],
     "cases": [{"id": "case-0001", "image": "case-0001/image.nii.gz", "labels": "case-0001/labels.nii.gz",
                "sha256": {"image": "...", "labels": "..."}, "split": "train", "modality": "CT",
                "structures": {"Bladder": "matched", "CTVn": "missing", ...}}, ...],
     "import": {...the import report...}}

Paths are relative to the dataset folder (the folder can be moved or shared); case ids carry no
patient identifiers (the key to them lives outside the folder, see :mod:`.importer`).  A structure
entry may be the full labels.json entry (value, name, paper_name, color, RT type, terminology) or
just value and name, in which case the family's registered structure of that name is used.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..structures import Structure

MANIFEST_FILE = "dataset.json"
FORMAT_VERSION = 1
KIND = "cervixautoseg-dataset"
SPLITS = ("train", "validation", "test")
STATUSES = ("matched", "missing", "ambiguous")
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A case id is one plain folder name: no separators, no leading dot, at most 64 characters."""


@dataclasses.dataclass(frozen=True)
class DatasetCase:
    """One case of a dataset: image and label map files (absolute paths) and what is known of them.

    ``labels`` is None for an image-only case (nothing to train or evaluate on, still segmentable);
    ``split`` is ``"train"``, ``"validation"``, ``"test"`` or None (not assigned);
    ``sha256`` maps ``"image"`` / ``"labels"`` to the files' digests;
    ``structures`` maps each structure name to ``matched`` / ``missing`` / ``ambiguous``
    (empty when the manifest does not say).
    """

    id: str
    image: Path
    labels: Path | None
    split: str | None
    modality: str
    sha256: Mapping[str, str]
    structures: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded dataset folder: its root, model family, structures (label values) and cases."""

    root: Path
    family: str
    structures: tuple[Structure, ...]
    cases: tuple[DatasetCase, ...]
    import_report: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def case(self, case_id: str) -> DatasetCase:
        """The case called ``case_id``; InputError when there is none."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise InputError(f"dataset {self.root} has no case {case_id!r}")

    def split_of(self, split: str) -> tuple[DatasetCase, ...]:
        """The cases assigned to ``split`` (``train``, ``validation`` or ``test``)."""
        return tuple(case for case in self.cases if case.split == split)


def is_dataset(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a ``dataset.json``."""
    return (Path(path) / MANIFEST_FILE).is_file()


def load_dataset(path: str | Path, verify: bool = False) -> Dataset:
    """Read ``path/dataset.json`` (``path`` may also be the manifest file itself).

    Args:
        path: the dataset folder.
        verify: also check every file's sha256 against the manifest (reads every file).

    Raises:
        InputError: one line naming the manifest and what is wrong with it (missing, not JSON,
            wrong kind or version, a bad case entry, a missing file, a checksum mismatch).
    """
    path = Path(path)
    root = path.parent if path.name == MANIFEST_FILE and path.is_file() else path
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        raise InputError(f"{root} is not a dataset folder (no {MANIFEST_FILE}); create one with `cervixautoseg dataset import`")
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"cannot read {manifest}: {_one_line(error)}") from None
    try:
        dataset = _parse(root.resolve(), document)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, InputError):
            raise InputError(f"{manifest}: {error}") from None
        raise InputError(f"{manifest}: malformed manifest ({_one_line(error)})") from None
    if verify:
        verify_dataset(dataset)
    return dataset


def verify_dataset(dataset: Dataset) -> None:
    """InputError naming the first file whose sha256 differs from the manifest's (or that is gone)."""
    from ..models import file_sha256

    for case in dataset.cases:
        for role, file in (("image", case.image), ("labels", case.labels)):
            if file is None or role not in case.sha256:
                continue
            if not file.is_file():
                raise InputError(f"dataset {dataset.root}: {role} of {case.id} ({file}) is missing")
            if file_sha256(file) != case.sha256[role]:
                raise InputError(f"dataset {dataset.root}: {role} of {case.id} ({file.name}) changed since import "
                                 "(sha256 differs from dataset.json)")


def _parse(root: Path, document: Any) -> Dataset:
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise InputError(f"not a cervixautoseg dataset manifest (kind is not {KIND!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise InputError(f"format_version {document.get('format_version')!r} is not supported (this version reads {FORMAT_VERSION})")
    family = str(document["family"]).lower()
    structures = _structures(family, document["structures"])
    cases, seen = [], set()
    for entry in document["cases"]:
        case = _case(root, entry, structures)
        if case.id in seen:
            raise InputError(f"case id {case.id!r} is listed twice")
        seen.add(case.id)
        cases.append(case)
    report = document.get("import") or {}
    return Dataset(root, family, structures, tuple(cases), report if isinstance(report, dict) else {})


def _structures(family: str, entries: Sequence[Mapping[str, Any]]) -> tuple[Structure, ...]:
    """Structures of the manifest: full labels.json entries as they are, short ones from the family."""
    from ..structures import structures_from_json

    if not isinstance(entries, list) or not entries:
        raise InputError("the manifest lists no structures")
    if all("terminology" in entry and "color" in entry for entry in entries):
        structures = structures_from_json({"labels": entries})
    else:
        from ..families import get_family

        known = get_family(family)
        structures = []
        for entry in entries:
            structure = known.structure(str(entry["name"]))
            if structure.value != int(entry["value"]):
                raise InputError(f"structure {structure.name} has value {entry['value']} in the manifest, "
                                 f"{structure.value} in family {family}")
            structures.append(structure)
        structures = tuple(structures)
    values = [s.value for s in structures]
    if len(set(values)) != len(values) or 0 in values:
        raise InputError(f"structure label values must be distinct and non-zero, got {values}")
    return structures


def _case(root: Path, entry: Mapping[str, Any], structures: Sequence[Structure]) -> DatasetCase:
    case_id = str(entry["id"])
    if not CASE_ID_PATTERN.match(case_id):
        raise InputError(f"case id {case_id!r} is not a plain folder name")
    split = entry.get("split")
    if split is not None and split not in SPLITS:
        raise InputError(f"case {case_id}: split {split!r} is not one of {', '.join(SPLITS)}")
    status = entry.get("structures") or {}
    if not isinstance(status, dict) or any(v not in STATUSES for v in status.values()):
        raise InputError(f"case {case_id}: structure statuses must be one of {', '.join(STATUSES)}")
    sha = entry.get("sha256") or {}
    if not isinstance(sha, dict):
        raise InputError(f"case {case_id}: sha256 is not a mapping")
    labels = entry.get("labels")
    return DatasetCase(
        id=case_id,
        image=_inside(root, entry["image"], case_id),
        labels=_inside(root, labels, case_id) if labels else None,
        split=split,
        modality=str(entry.get("modality") or "").upper(),
        sha256={str(k): str(v) for k, v in sha.items()},
        structures={str(k): str(v) for k, v in status.items()},
    )


def _inside(root: Path, relative: Any, case_id: str) -> Path:
    """``root / relative``, refusing absolute paths and ``..`` (a manifest names files in its folder only)."""
    text = str(relative)
    candidate = Path(text)
    if not text or candidate.is_absolute() or ".." in candidate.parts:
        raise InputError(f"case {case_id}: file {text!r} is not a path inside the dataset folder")
    return root / candidate


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------------ writing
def case_entry(root: Path, case: DatasetCase) -> dict[str, Any]:
    """The manifest entry of ``case`` (its paths made relative to ``root``)."""
    root = Path(root).resolve()

    def relative(path: Path | None) -> str | None:
        if path is None:
            return None
        return Path(path).resolve().relative_to(root).as_posix()

    return {
        "id": case.id,
        "image": relative(case.image),
        "labels": relative(case.labels),
        "sha256": dict(case.sha256),
        "split": case.split,
        "modality": case.modality,
        "structures": dict(case.structures),
    }


def manifest_document(dataset: Dataset) -> dict[str, Any]:
    """The dataset.json document of ``dataset``."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "family": dataset.family,
        "structures": [structure.to_json() for structure in dataset.structures],
        "cases": [case_entry(dataset.root, case) for case in dataset.cases],
        "import": dict(dataset.import_report),
    }


def write_dataset(dataset: Dataset) -> Path:
    """Write ``dataset.root/dataset.json`` atomically (after the case files are in place); returns its path.

    The document is checked by parsing it back before it is written, so a written manifest
    always loads.
    """
    from ..atomic import write_text_atomic

    root = Path(dataset.root)
    document = manifest_document(dataset)
    _parse(root.resolve(), json.loads(json.dumps(document)))
    target = root / MANIFEST_FILE
    write_text_atomic(target, json.dumps(document, indent=2) + "\n")
    return target
