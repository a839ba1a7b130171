"""A clinic's DICOM export as it comes: image series and RTSTRUCTs, paired by what they reference.

:func:`scan_tree` reads every file header once (pixel data deferred, through the series reader's
own header reader, so damaged files are recognised the same way) and groups the files by
patient, study and series, whatever the folders look like: one patient spread over several
folders, several patients in one folder, file names that say nothing.  Non-DICOM files are
noted and skipped.

:func:`pair_rtstructs` pairs each RT Structure Set with the image series it was drawn on:

1. the Series Instance UIDs of its ReferencedFrameOfReferenceSequence → RTReferencedStudySequence
   → RTReferencedSeriesSequence, when exactly one of them is in the tree;
2. otherwise its Frame of Reference UID, when exactly one CT/MR series of the tree (not a
   localizer) shares it;
3. otherwise it is skipped, with the reason (the series it references is absent, or several
   series share its frame of reference).

Folder names are never used.  When several RTSTRUCTs end up on one series, the newest wins —
by Structure Set Date/Time, else Instance Creation Date/Time, then SOP Instance UID so the
choice is reproducible — and the others are reported as superseded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from ..dicom_series import SeriesInfo

log = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclasses.dataclass
class ImageSeries:
    """One image series of the tree (headers only): its files and identity."""

    uid: str
    modality: str
    patient_id: str
    study_uid: str
    frame_of_reference_uid: str
    files: list[Path]
    members: list[tuple[Path, Any]]
    """(path, header) of every file, kept for :func:`series_info` (no second header pass)."""
    damaged: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class RtStructFile:
    """One RT Structure Set file of the tree (header facts only)."""

    path: Path
    patient_id: str
    study_uid: str
    sop_instance_uid: str
    referenced_series: frozenset[str]
    frames_of_reference: frozenset[str]
    date_time: str
    """Structure Set Date + Time (else Instance Creation), ``YYYYMMDDHHMMSS``; '' when absent."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Something of the tree that yields no case, and why (``detail`` may name files and UIDs)."""

    kind: str
    """``rtstruct`` or ``series``."""
    reason: str
    """Short, without identifiers (goes into the dataset report)."""
    detail: str
    path: Path | None
    patient_id: str = ""
    uids: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Pairing:
    """An image series with the RTSTRUCT drawn on it, and how they were paired."""

    series: ImageSeries
    rtstruct: RtStructFile
    how: str
    """``series uid`` or ``frame of reference``."""
    superseded: list[RtStructFile] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DicomTree:
    """What :func:`scan_tree` found under ``root``."""

    root: Path
    series: dict[str, ImageSeries]
    rtstructs: list[RtStructFile]
    non_dicom: list[Path]
    damaged: list[Any]
    """Damaged files that belong to no series (:class:`~CervixAutoSegLib.dicom_series.DamagedFile`)."""
    other_objects: int
    """DICOM files that are neither images nor RTSTRUCTs (RT Plan, RT Dose, SR, ...)."""
    files: int


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def rtstruct_facts(path: Path, ds: Any) -> RtStructFile:
    """The header facts of an RTSTRUCT dataset that pairing and the key file need."""
    referenced = set()
    frames = {_text(ds, "FrameOfReferenceUID")} - {""}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        frames |= {_text(frame, "FrameOfReferenceUID")} - {""}
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                referenced |= {_text(series, "SeriesInstanceUID")} - {""}
    for roi in ds.get("StructureSetROISequence", []) or []:
        frames |= {_text(roi, "ReferencedFrameOfReferenceUID")} - {""}
    date = _text(ds, "StructureSetDate") or _text(ds, "InstanceCreationDate")
    time = _text(ds, "StructureSetTime") or _text(ds, "InstanceCreationTime")
    return RtStructFile(path, _text(ds, "PatientID"), _text(ds, "StudyInstanceUID"), _text(ds, "SOPInstanceUID"),
                        frozenset(referenced), frozenset(frames), f"{date}{time.split('.')[0]}")


def scan_tree(root: str | Path) -> DicomTree:
    """Read every file header under ``root`` (recursive) and group images by series.

    Raises:
        InputError: ``root`` is not a folder, or holds no DICOM file at all.
    """
    from .. import dicom_series as ds_module

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the folder holding the DICOM export")
    series: dict[str, ImageSeries] = {}
    rtstructs: list[RtStructFile] = []
    non_dicom: list[Path] = []
    damaged: list[Any] = []
    seen: set[str] = set()
    other = count = 0
    for path in ds_module._iter_files([root]):  # same walk as the series reader: DICOMDIR and dot files left out
        count += 1
        ds = ds_module._read_header(path)
        if ds is None:
            non_dicom.append(path)
        elif isinstance(ds, ds_module.DamagedFile):
            damaged.append(ds)
        elif _text(ds, "SOPClassUID") == RT_STRUCTURE_SET_STORAGE:
            rtstructs.append(rtstruct_facts(path, ds))
        elif ds_module._is_image(ds):
            instance = _text(ds, "SOPInstanceUID")
            if instance and instance in seen:  # two copies of one export: one image
                continue
            seen.add(instance)
            _add_image(series, path, ds)
        else:
            other += 1
    if not series and not rtstructs:
        raise InputError(f"no DICOM images or RTSTRUCTs under {root} ({count} files, {len(non_dicom)} not DICOM)")
    unattached = _attach_damaged(series, damaged)
    for path in non_dicom:
        log.info("skipping %s: not a DICOM file", path)
    return DicomTree(root, series, rtstructs, non_dicom, unattached, other, count)


def _add_image(series: dict[str, ImageSeries], path: Path, ds: Any) -> None:
    uid = _text(ds, "SeriesInstanceUID") or f"(no series UID: {path.parent})"
    entry = series.get(uid)
    if entry is None:
        entry = series[uid] = ImageSeries(uid, _text(ds, "Modality").upper(), _text(ds, "PatientID"),
                                          _text(ds, "StudyInstanceUID"), _text(ds, "FrameOfReferenceUID"), [], [])
    entry.files.append(path)
    entry.members.append((path, ds))


def _attach_damaged(series: dict[str, ImageSeries], damaged: list[Any]) -> list[Any]:
    """Damaged files go to their series (so reading it fails naming them); returns the rest."""
    rest = []
    for file in damaged:
        owner = series.get(file.series_instance_uid) if file.series_instance_uid else None
        if owner is None:
            rest.append(file)
        else:
            owner.damaged.append(file)
    return rest


def series_info(series: ImageSeries) -> "SeriesInfo":
    """The series reader's :class:`~CervixAutoSegLib.dicom_series.SeriesInfo` of ``series``."""
    from .. import dicom_series as ds_module

    info = ds_module._info(series.uid, series.members)
    info.damaged = list(series.damaged)
    return info


def _segmentable(series: ImageSeries) -> bool:
    """A CT or MR series of parallel slices, not a localizer: something a structure set is drawn on."""
    info = series_info(series)
    return info.is_supported and not info.is_localizer and info.parallel


def pair_rtstructs(tree: DicomTree) -> tuple[list[Pairing], list[Skipped]]:
    """Pair every RTSTRUCT with its image series (see the module docstring); also report the
    segmentable series no RTSTRUCT references."""
    skipped: list[Skipped] = []
    by_series: dict[str, list[tuple[RtStructFile, str]]] = {}
    segmentable = {uid for uid, entry in tree.series.items() if _segmentable(entry)}
    for rtstruct in tree.rtstructs:
        target, how, problem = _target(rtstruct, tree, segmentable)
        if target is None:
            skipped.append(problem)
            continue
        by_series.setdefault(target, []).append((rtstruct, how))
    pairings = []
    for uid, found in by_series.items():
        found.sort(key=lambda item: (item[0].date_time, item[0].sop_instance_uid))
        newest, how = found[-1]
        pairing = Pairing(tree.series[uid], newest, how, [rt for rt, _ in found[:-1]])
        for older in pairing.superseded:
            skipped.append(Skipped("rtstruct", "superseded by a newer RTSTRUCT of the same series",
                                   f"{older.path}: a newer RTSTRUCT ({newest.path.name}, "
                                   f"{newest.date_time or 'no date'}) references the same series",
                                   older.path, older.patient_id,
                                   {"rtstruct_sop_instance_uid": older.sop_instance_uid, "series_instance_uid": uid}))
        pairings.append(pairing)
    for uid in sorted(segmentable - set(by_series)):
        entry = tree.series[uid]
        skipped.append(Skipped("series", "no RTSTRUCT references this image series",
                               f"series {uid} ({entry.modality}, {len(entry.files)} files in "
                               f"{entry.files[0].parent}) has no RTSTRUCT", entry.files[0], entry.patient_id,
                               {"series_instance_uid": uid, "study_instance_uid": entry.study_uid}))
    pairings.sort(key=lambda p: (p.series.patient_id, p.series.study_uid, p.series.uid))
    return pairings, skipped


def _target(rtstruct: RtStructFile, tree: DicomTree, segmentable: set[str]
            ) -> tuple[str | None, str, Skipped | None]:
    """(series uid, how, None) for a pairable RTSTRUCT, else (None, '', why)."""
    uids = {"rtstruct_sop_instance_uid": rtstruct.sop_instance_uid}
    present = sorted(rtstruct.referenced_series & set(tree.series))
    if len(present) == 1:
        return present[0], "series uid", None
    if len(present) > 1:
        return None, "", Skipped("rtstruct", "references several image series of the tree",
                                 f"{rtstruct.path} references {len(present)} series: {', '.join(present)}",
                                 rtstruct.path, rtstruct.patient_id, uids)
    sharing = sorted(uid for uid in segmentable if tree.series[uid].frame_of_reference_uid in rtstruct.frames_of_reference)
    if len(sharing) == 1:
        if rtstruct.referenced_series:
            log.info("%s: referenced series absent; paired by Frame of Reference with %s", rtstruct.path, sharing[0])
        return sharing[0], "frame of reference", None
    if len(sharing) > 1:
        return None, "", Skipped("rtstruct", "its referenced series is absent and several series share its "
                                 "Frame of Reference", f"{rtstruct.path}: series {', '.join(sharing)} share its "
                                 "Frame of Reference and none is referenced", rtstruct.path, rtstruct.patient_id, uids)
    wanted = ", ".join(sorted(rtstruct.referenced_series)) or "no series"
    return None, "", Skipped("rtstruct", "references an image series that is not in the tree",
                             f"{rtstruct.path} references {wanted}, which is not under {tree.root}",
                             rtstruct.path, rtstruct.patient_id,
                             {**uids, "referenced_series": wanted})


def modality_of(pairings: Sequence[Pairing]) -> set[str]:
    """The image modalities of the paired series."""
    return {pairing.series.modality for pairing in pairings}
