"""``cervixautoseg dataset import``: a clinic's DICOM-RT export → a dataset folder.

Steps: :func:`~.dicom_tree.scan_tree` (every header once), :func:`~.dicom_tree.pair_rtstructs`
(RTSTRUCT ↔ image series by referenced UIDs), then per pairing: read the series with the
product's DICOM reader (array (z, y, x), LPS geometry kept exactly), map ROI names to the
family's structures (:mod:`.names`), rasterise the chosen ROIs with the product's RTSTRUCT
reader onto that grid, and write ``<case>/image.nii.gz`` (``.nrrd`` for a gantry-tilted,
sheared grid NIfTI cannot hold), ``labels.nii.gz`` (uint8, the family's label values; where
ROIs overlap the higher value wins, as in every label map of the product) and ``labels.json``.

Privacy: case ids are ``case-0001``, ``case-0002``, ... in the order of (patient id, study,
series) — never a name, id or UID.  The dataset folder holds no identifier: the images are NIfTI
(no DICOM header), the import report names cases, structures and ROI names only.  Patient ids,
UIDs and file paths go to the **key file**, written outside the dataset folder (default
``DATASET.key.json`` beside it, mode 0600), so the folder can be shared without it.

Safety: everything is assembled in a staging folder beside ``--out`` and moved into place at the
end; an existing ``--out`` is replaced only when it is an earlier dataset and ``--overwrite`` is
given; a folder of anything else is never touched.  The split (``--split A:B:C``) is drawn per
patient, so no patient has cases on both sides.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, OutputConflictError, OutputError
from ..structures import Structure
from .dicom_tree import DicomTree, Pairing, Skipped, pair_rtstructs, scan_tree, series_info
from .manifest import MANIFEST_FILE, Dataset, DatasetCase, write_dataset
from .names import NameRules, RoiVerdict, StructureMatch, load_name_rules, match_structures, plain_name

if TYPE_CHECKING:
    from ..families import ModelFamily

log = logging.getLogger(__name__)

KEY_KIND = "cervixautoseg-dataset-key"
KEY_SUFFIX = ".key.json"
CASE_ID_FORMAT = "case-{:04d}"
SKIPPED_ID_FORMAT = "skipped-{:04d}"
KEY_FILE_MODE = 0o600
"""The key file links case ids to patients: readable by its owner only."""


@dataclasses.dataclass(frozen=True)
class ImportedCase:
    """One case written to the staging folder, with what the report and the key need."""

    case: DatasetCase
    pairing: Pairing
    patient_id: str
    report: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """What an import wrote: the dataset, the key file, the cases and what was skipped (with ids)."""

    dataset: Dataset
    key: Path
    cases: tuple[ImportedCase, ...]
    skipped: tuple[tuple[str, Skipped], ...]
    tree: DicomTree


# ------------------------------------------------------------------ locations
def key_path_for(out: Path, key: Path | None) -> Path:
    """The key file: ``key``, else ``<out>.key.json`` beside ``out``; never inside ``out``."""
    from ..outputs import check_output_file

    chosen = Path(key) if key is not None else out.parent / f"{out.name}{KEY_SUFFIX}"
    full, root = chosen.absolute(), out.absolute()
    if full == root or root in full.parents:
        raise OutputError(f"--key {chosen} is inside the dataset folder {out}; the key must live outside it "
                          "so the dataset can be shared without it")
    return check_output_file(chosen, "--key", example=f"{out.name}{KEY_SUFFIX}")


def check_destination(out: Path, key: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` holding anything but an earlier dataset (replaced only with ``overwrite``)
    and an existing key file (replaced only with ``overwrite``)."""
    from ..outputs import check_output_folder

    check_output_folder(out, "--out", staged_beside=True)
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_FILE).is_file() or not _is_our_manifest(out / MANIFEST_FILE):
            raise OutputConflictError(f"--out {out} is a folder with other files in it, not a dataset; "
                                      "choose a new or empty folder")
        if not overwrite:
            raise OutputConflictError(f"--out {out} already holds a dataset; pass --overwrite to replace it")
    if key.exists() and not overwrite:
        raise OutputConflictError(f"--key {key} exists; pass --overwrite to replace it (keep a copy: it is "
                                  "the only link from case ids back to patients)")


def _is_our_manifest(path: Path) -> bool:
    from .manifest import KIND

    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------ the import
def import_dataset(
    root: str | Path,
    out: str | Path,
    *,
    names: str | Path | None = None,
    family: str | None = None,
    split: str | None = None,
    seed: int = 0,
    key: str | Path | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Import the DICOM-RT tree under ``root`` into the dataset folder ``out`` (see the module docstring).

    Args:
        root: any folder tree of DICOM files.
        out: the dataset folder to write.
        names: a user mapping file (:mod:`.names`), or None.
        family: ``ct``/``mr`` (a registered family); None: the only modality with RTSTRUCTs.
        split: ``"A:B:C"`` train:validation:test ratio drawn per patient; None: no split.
        seed: seed of the split.
        key: key file path (default ``<out>.key.json`` beside ``out``).
        overwrite: replace an earlier dataset in ``out`` and an existing key file.
    """
    from ..outputs import make_staging, remove_stale_staging

    out = Path(out)
    key_path = key_path_for(out, Path(key) if key is not None else None)
    check_destination(out, key_path, overwrite)
    ratios = parse_ratios(split) if split else None
    chosen = _family(family)
    rules = load_name_rules(names, chosen.structures) if chosen is not None else None
    tree = scan_tree(root)
    pairings, skipped = pair_rtstructs(tree)
    chosen = chosen or _family_from(pairings)
    rules = rules or load_name_rules(names, chosen.structures)
    pairings = _of_modality(pairings, chosen.modality, skipped)
    remove_stale_staging(out)
    staging = make_staging(out)
    try:
        cases = _import_cases(pairings, staging, chosen.structures, rules, skipped)
        if not cases:
            raise InputError(f"no case could be imported from {root}: {_skip_summary(skipped)}")
        cases = _with_splits(cases, ratios, seed)
        skipped_ids = tuple((SKIPPED_ID_FORMAT.format(n), s) for n, s in enumerate(skipped, 1))
        report = import_report(tree, chosen.name, rules, cases, skipped_ids, split, seed)
        dataset = Dataset(staging, chosen.name, chosen.structures, tuple(c.case for c in cases), report)
        write_dataset(dataset)
        write_key(key_path, out, tree, cases, skipped_ids)
        (staging / _marker_name()).unlink(missing_ok=True)  # the staging marker is no part of the dataset
        _move_into_place(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    final = Dataset(out.resolve(), dataset.family, dataset.structures,
                    tuple(_moved(c.case, staging, out) for c in cases), report)
    return ImportResult(final, key_path, tuple(cases), skipped_ids, tree)


def _marker_name() -> str:
    from ..outputs import STAGING_MARKER

    return STAGING_MARKER


def _moved(case: DatasetCase, staging: Path, out: Path) -> DatasetCase:
    root = out.resolve()
    relative = lambda path: None if path is None else root / Path(path).relative_to(staging)  # noqa: E731
    return dataclasses.replace(case, image=relative(case.image), labels=relative(case.labels))


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to ``out``; an earlier dataset there is set aside first and
    removed after, so a reader sees the old dataset or the new one."""
    out = out.absolute()
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        if old.exists():  # left by a run of this pid number that was killed mid-swap
            shutil.rmtree(old)
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    from ..atomic import follow_umask

    follow_umask(out)  # mkdtemp made the staging folder owner-only
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _family(name: str | None) -> "ModelFamily | None":
    from ..families import get_family

    return get_family(name) if name else None


def _family_from(pairings: Sequence[Pairing]) -> "ModelFamily":
    from ..families import family_for_modality

    modalities = sorted({p.series.modality for p in pairings})
    if not modalities:
        raise InputError("no RTSTRUCT could be paired with an image series; nothing to import")
    if len(modalities) > 1:
        raise InputError(f"RTSTRUCTs are drawn on {' and '.join(modalities)} series; choose one with --family "
                         "(ct or mr) and import the other into a second dataset")
    family = family_for_modality(modalities[0])
    if family is None:
        raise InputError(f"no model family contours {modalities[0]} images")
    return family


def _of_modality(pairings: list[Pairing], modality: str, skipped: list[Skipped]) -> list[Pairing]:
    kept = []
    for pairing in pairings:
        if pairing.series.modality == modality.upper():
            kept.append(pairing)
            continue
        skipped.append(_skip(pairing, "series", f"the image series is {pairing.series.modality or 'of no modality'}, "
                             f"the family contours {modality}", f"series {pairing.series.uid}"))
    return kept


def _skip(pairing: Pairing, kind: str, reason: str, detail: str) -> Skipped:
    return Skipped(kind, reason, f"{pairing.rtstruct.path}: {detail}", pairing.rtstruct.path,
                   pairing.series.patient_id, _uids(pairing))


def _uids(pairing: Pairing) -> dict[str, str]:
    return {"study_instance_uid": pairing.series.study_uid, "series_instance_uid": pairing.series.uid,
            "frame_of_reference_uid": pairing.series.frame_of_reference_uid,
            "rtstruct_sop_instance_uid": pairing.rtstruct.sop_instance_uid}


def _skip_summary(skipped: Sequence[Skipped]) -> str:
    if not skipped:
        return "no RTSTRUCT found"
    reasons: dict[str, int] = {}
    for item in skipped:
        reasons[item.reason] = reasons.get(item.reason, 0) + 1
    return "; ".join(f"{count} × {reason}" for reason, count in reasons.items())


# ------------------------------------------------------------------ one case
def _import_cases(pairings: Sequence[Pairing], staging: Path, structures: tuple[Structure, ...],
                  rules: NameRules, skipped: list[Skipped]) -> list[ImportedCase]:
    cases: list[ImportedCase] = []
    for pairing in pairings:
        case_id = CASE_ID_FORMAT.format(len(cases) + 1)
        outcome = import_case(pairing, staging / case_id, case_id, structures, rules)
        if isinstance(outcome, Skipped):
            shutil.rmtree(staging / case_id, ignore_errors=True)
            skipped.append(outcome)
            log.warning("skipped: %s (%s)", outcome.reason, outcome.detail)
        else:
            cases.append(outcome)
            log.info("%s: %s", case_id, status_line(outcome.report["structures"]))
    return cases


def import_case(pairing: Pairing, folder: Path, case_id: str, structures: tuple[Structure, ...],
                rules: NameRules) -> ImportedCase | Skipped:
    """Read, map, rasterise and write one case into ``folder``; a :class:`Skipped` when it cannot be."""
    from ..dicom_series import read_series_files

    try:
        image = read_series_files(series_info(pairing.series))
    except InputError as error:
        return _skip(pairing, "series", "the image series cannot be read", str(error))
    try:
        drawn = rtstruct_labels(pairing.rtstruct.path, image, structures, rules)
    except InputError as error:
        return _skip(pairing, "rtstruct", "the RTSTRUCT cannot be read on its image series", str(error))
    matches, verdicts = drawn.matches, drawn.verdicts
    if not any(m.status == "matched" for m in matches.values()):
        return _skip(pairing, "rtstruct", "no ROI matched a structure of the family",
                     f"ROIs {', '.join(repr(plain_name(v.roi)) for v in verdicts) or '(none)'}; map them with --names")
    labels, overlaps = drawn.labels, drawn.overlaps
    files = write_case_files(folder, image, image.with_array(labels), structures)
    status = {name: match.status for name, match in matches.items()}
    case = DatasetCase(case_id, files["image"], files["labels"], None, image.modality, _hashes(files), status)
    report = case_report(pairing, matches, verdicts, overlaps)
    return ImportedCase(case, pairing, pairing.series.patient_id, report)


@dataclasses.dataclass(frozen=True)
class RtstructLabels:
    """An RTSTRUCT as a label map on its image grid, with the name decisions behind it."""

    labels: np.ndarray
    """uint8 (z, y, x) on the image grid, the family's label values."""
    matches: dict[str, StructureMatch]
    verdicts: list[RoiVerdict]
    overlaps: list[str]

    def status(self) -> dict[str, str]:
        """TG-263 name → ``matched`` / ``missing`` / ``ambiguous``."""
        return {name: match.status for name, match in self.matches.items()}


def rtstruct_labels(rtstruct, image, structures: Sequence[Structure], rules: NameRules | None = None) -> RtstructLabels:
    """Map the ROI names of ``rtstruct`` (a path or a pydicom Dataset) to ``structures`` and rasterise the
    chosen ROIs onto ``image`` (the Volume of its DICOM series) with the product's RTSTRUCT reader.

    Only ROIs that may become a structure are filled (a body outline costs time for nothing).
    The same rules serve ``dataset import`` and ``evaluate --truth RTSTRUCT``.

    Raises:
        InputError: unreadable RTSTRUCT, or drawn in another Frame of Reference than ``image``.
    """
    from ..rtstruct.reader import read_header, read_rtstruct_masks, unique_roi_names
    from .names import classify_roi

    rules = rules or NameRules()
    header = read_header(rtstruct) if isinstance(rtstruct, (str, Path)) else rtstruct
    roi_names = unique_roi_names(header)
    candidates = [n for n in roi_names if classify_roi(n, structures, rules).structure is not None]
    masks = read_rtstruct_masks(header, image, rois=candidates)
    empty = {name for name, mask in masks.items() if not mask.any()}
    matches, verdicts = match_structures(roi_names, structures, rules, empty)
    labels, overlaps = paint_labels(image.shape, structures, matches, masks)
    return RtstructLabels(labels, matches, verdicts, overlaps)


def paint_labels(shape: tuple[int, int, int], structures: Sequence[Structure], matches: dict[str, StructureMatch],
                 masks: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """uint8 (z, y, x) label map of the matched structures (higher value painted last, so it wins
    where ROIs overlap) and one note per overlapping pair."""
    labels = np.zeros(shape, dtype=np.uint8)
    painted: list[tuple[Structure, np.ndarray]] = []
    notes = []
    for structure in sorted(structures, key=lambda s: s.value):
        match = matches[structure.name]
        if match.status != "matched":
            continue
        mask = masks[match.roi]
        for earlier, earlier_mask in painted:
            shared = int(np.count_nonzero(mask & earlier_mask))
            if shared:
                notes.append(f"{structure.name} overlaps {earlier.name} in {shared} voxels "
                             f"(labelled {structure.name}, the higher label value)")
        labels[mask] = structure.value
        painted.append((structure, mask))
    return labels, notes


def write_case_files(folder: Path, image, labels, structures: Sequence[Structure]) -> dict[str, Path]:
    """``image.nii.gz`` (``image.nrrd`` for a sheared grid), ``labels`` likewise, ``labels.json``."""
    from ..image_io import write_image
    from ..structures import write_labels_json

    suffix = ".nii.gz" if image.is_orthogonal else ".nrrd"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"image": folder / f"image{suffix}", "labels": folder / f"labels{suffix}"}
    write_image(image.with_array(image.array, meta={}), files["image"])  # meta holds the DICOM identity: not written
    write_image(labels.with_array(labels.array, meta={}), files["labels"])
    write_labels_json(folder / "labels.json", "manual contours (RTSTRUCT)", tuple(structures))
    return files


def _hashes(files: dict[str, Path]) -> dict[str, str]:
    from ..models import file_sha256

    return {role: file_sha256(path) for role, path in files.items()}


def case_report(pairing: Pairing, matches: dict[str, StructureMatch], verdicts: Sequence[RoiVerdict],
                overlaps: Sequence[str]) -> dict[str, Any]:
    """The import report of one case: structures decided, ROIs excluded or unmatched, notes (no identifiers)."""
    notes = list(overlaps)
    if pairing.how != "series uid":
        notes.append(f"paired by {pairing.how}: the RTSTRUCT does not reference this series by UID")
    if pairing.superseded:
        notes.append(f"{len(pairing.superseded)} older RTSTRUCT(s) of this series superseded (newest is used)")
    return {
        "pairing": pairing.how,
        "structures": {name: match.to_json() for name, match in matches.items()},
        "rois": {
            "excluded": [{"roi": plain_name(v.roi), "by": v.excluded} for v in verdicts if v.excluded],
            "unmatched": [plain_name(v.roi) for v in verdicts if v.structure is None and not v.excluded],
        },
        "notes": notes,
    }


def status_line(structures: dict[str, dict]) -> str:
    """``"Bladder matched (BLADDER_O), CTVn ambiguous (CTV_N | CTV Nodes), CTVp missing"``."""
    parts = []
    for name, entry in structures.items():
        if entry["status"] == "matched":
            parts.append(f"{name} matched ({entry['roi']})")
        elif entry["status"] == "ambiguous":
            parts.append(f"{name} ambiguous ({' | '.join(entry.get('candidates', []))})")
        else:
            empty = any("is empty" in note for note in entry.get("notes", []))
            parts.append(f"{name} missing" + (" (its ROI is empty)" if empty else ""))
    return ", ".join(parts)


# ------------------------------------------------------------------ split, report, key
def parse_ratios(text: str) -> tuple[int, int, int]:
    """``"3:1:1"`` → (3, 1, 1); InputError unless three non-negative integers with training > 0."""
    try:
        ratios = tuple(int(v) for v in text.split(":"))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] == 0:
        raise InputError(f"--split must be three non-negative integers like 3:1:1, got {text!r}")
    return ratios  # type: ignore[return-value]


def _with_splits(cases: list[ImportedCase], ratios: tuple[int, int, int] | None, seed: int) -> list[ImportedCase]:
    """Each case's split, drawn per patient (:func:`CervixAutoSegLib.cases.split_cases` on patients)."""
    if ratios is None:
        return cases
    from ..cases import split_cases

    patients = sorted({c.patient_id or c.case.id for c in cases})
    parts = split_cases(patients, ratios, seed)  # type: ignore[arg-type]  # any sequence splits the same way
    split_of = {patient: name for name, part in zip(("train", "validation", "test"), parts) for patient in part}
    return [dataclasses.replace(c, case=dataclasses.replace(c.case, split=split_of[c.patient_id or c.case.id]))
            for c in cases]


def import_report(tree: DicomTree, family: str, rules: NameRules, cases: Sequence[ImportedCase],
                  skipped: Sequence[tuple[str, Skipped]], split: str | None, seed: int) -> dict[str, Any]:
    """The ``import`` section of dataset.json: counts, per-case decisions, skipped items (no identifiers)."""
    from .. import __version__

    return {
        "tool": f"CervixAutoSeg {__version__}",
        "imported_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "family": family,
        "names": rules.describe(),
        "split": {"ratio": split, "seed": seed, "by": "patient"} if split else None,
        "counts": {"files": tree.files, "non_dicom_files": len(tree.non_dicom),
                   "damaged_files": len(tree.damaged), "other_dicom_objects": tree.other_objects,
                   "image_series": len(tree.series), "rtstructs": len(tree.rtstructs),
                   "cases": len(cases), "skipped": len(skipped)},
        "rules": {"pairing": "referenced Series Instance UID, else a unique series sharing the Frame of Reference",
                  "several_rtstructs": "the newest by Structure Set Date/Time is used, the others are skipped",
                  "overlaps": "the higher label value wins in labels.nii.gz"},
        "cases": {c.case.id: c.report for c in cases},
        "skipped": [{"id": skip_id, "kind": item.kind, "reason": item.reason} for skip_id, item in skipped],
    }


def write_key(path: Path, out: Path, tree: DicomTree, cases: Sequence[ImportedCase],
              skipped: Sequence[tuple[str, Skipped]]) -> None:
    """The key file (case id ↔ patient id, UIDs, source files), atomically, readable by its owner only."""
    from ..atomic import atomic_path

    document = {
        "kind": KEY_KIND,
        "format_version": 1,
        "dataset": str(out.absolute()),
        "dicom_root": str(tree.root.absolute()),
        "cases": {c.case.id: {"patient_id": c.patient_id, **_uids(c.pairing),
                              "rtstruct_file": str(c.pairing.rtstruct.path),
                              "image_folder": str(c.pairing.series.files[0].parent),
                              "superseded_rtstructs": [str(r.path) for r in c.pairing.superseded]}
                  for c in cases},
        "skipped": {skip_id: {"kind": s.kind, "reason": s.reason, "detail": s.detail,
                              "file": str(s.path) if s.path else None, "patient_id": s.patient_id, **s.uids}
                    for skip_id, s in skipped},
        "non_dicom_files": [str(p) for p in tree.non_dicom],
        "damaged_files": [d.message() for d in tree.damaged],
    }
    with atomic_path(path, suffix=".json") as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        os.chmod(temporary, KEY_FILE_MODE)
    os.chmod(path, KEY_FILE_MODE)  # atomic_path gives the finished file the umask's mode
