"""A review folder: started once from an image and its contours, then graded by one or more reviewers.

Folder layout (``review start --out REVIEW``)::

    review.json          the manifest (:class:`~.model.Manifest`): case id, image grid, items, flags
    contours.seg.nrrd    every item's contour on the image grid, one segment per item (what the
                         panel shows; blinded: neutral names, one colour per structure)
    grades/              one append-only log per reviewer (:mod:`.storage`)

The key of a blinded review (which item is AI, which manual) is written to ``--key FILE``, which
must lie outside the folder; only :func:`load_key` (export, summary) reads it.

:class:`ReviewSession` is one reviewer's open review: :meth:`~ReviewSession.grade` and
:meth:`~ReviewSession.undo` append to that reviewer's log and return after fsync; reopening
replays the log, so the session resumes exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import random
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import write_text_atomic
from ..errors import InputError, OutputError
from ..structures import Structure
from ..volume import Volume
from .grades import Grade, parse_grade
from .model import KEY_FORMAT, SOURCES, GradeRecord, ImageGeometry, Manifest, ReviewItem
from .navigation import Stop
from .sources import ContourSet, load_sources
from .storage import Replay, ReviewerLog, log_path, read_log, reviewer_logs

log = logging.getLogger(__name__)

MANIFEST_FILE = "review.json"
CONTOURS_FILE = "contours.seg.nrrd"
CASE_ID_PREFIX = "case-"
CASE_ID_HASH_CHARS = 12
BLIND_LETTERS = "ABCDEFGH"
MAX_COMMENT_CHARS = 2000
"""A comment longer than this is cut (with a warning): a grade note, not a report."""


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds and 'Z' (the CSV's ``graded_utc``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------ grading state (replayed from the log)
@dataclasses.dataclass
class GradeState:
    """Grades by (item, slice) and the undo history, built by applying log events in order."""

    grades: dict[tuple[str, int], tuple[str, str, str]] = dataclasses.field(default_factory=dict)
    """(item, slice) → (grade value, comment, graded_utc)."""
    history: list[tuple[tuple[str, int], tuple[str, str, str] | None]] = dataclasses.field(default_factory=list)
    """Per applied grade, its stop and what it replaced (None: nothing) — popped by undo."""
    last: tuple[str, int] | None = None

    def apply(self, event: Mapping[str, Any]) -> None:
        op = event.get("op")
        if op == "grade":  # read every field before changing anything: a bad entry changes nothing
            key = (str(event["item"]), int(event["slice"]))
            entry = (Grade(event["grade"]).value, str(event.get("comment", "")), str(event["utc"]))
            self.history.append((key, self.grades.get(key)))
            self.grades[key] = entry
            self.last = key
        elif op == "undo" and self.history:
            key, previous = self.history.pop()
            if previous is None:
                self.grades.pop(key, None)
            else:
                self.grades[key] = previous
            self.last = key

    def to_json(self) -> dict:
        return {"grades": [[item, k, *entry] for (item, k), entry in self.grades.items()],
                "history": [[item, k, list(previous) if previous else None] for (item, k), previous in self.history],
                "last": list(self.last) if self.last else None}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> GradeState:
        state = cls()
        state.grades = {(str(item), int(k)): (str(g), str(c), str(t)) for item, k, g, c, t in document["grades"]}
        state.history = [((str(item), int(k)), tuple(previous) if previous else None)  # type: ignore[misc]
                         for item, k, previous in document["history"]]
        last = document.get("last")
        state.last = (str(last[0]), int(last[1])) if last else None
        return state


def replay_state(path: Path) -> tuple[GradeState, dict | None]:
    """The state a reviewer log (+ snapshot) holds, and its header."""
    replay = read_log(path)
    return replayed(replay, path), replay.header


def replayed(replay: Replay, path: Path) -> GradeState:
    """Snapshot state + events; an event that is not a valid grade or undo is skipped with a warning."""
    try:
        state = GradeState.from_json(replay.state) if replay.state else GradeState()
    except (KeyError, ValueError, TypeError):
        log.warning("%s: snapshot state unreadable; the whole log is replayed", path)
        return replayed(dataclasses.replace(replay, state=None, events=read_all_events(path)), path)
    for event in replay.events:
        try:
            state.apply(event)
        except (KeyError, ValueError, TypeError):
            message = f"{path}: an entry that is not a grade was skipped: {str(event)[:80]}"
            log.warning("%s", message)
            replay.warnings.append(message)
    return state


def read_all_events(path: Path) -> list[dict]:
    """Every event of a log, ignoring its snapshot."""
    events = []
    for line in path.read_bytes().split(b"\n") if path.exists() else []:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("op") != "open":
            events.append(event)
    return events


# ------------------------------------------------------------------ one reviewer's open review
class ReviewSession:
    """One reviewer grading one review folder (holds that reviewer's log lock until :meth:`close`)."""

    def __init__(self, folder: str | Path, reviewer: str):
        self.folder = Path(folder)
        self.reviewer = reviewer.strip()
        self.manifest = read_manifest(self.folder)
        self._items = {item.id: item for item in self.manifest.items}
        self._log = ReviewerLog(log_path(self.folder, self.reviewer), self.reviewer, self.manifest.review_id)
        replay = self._log.open()
        self.state = replayed(replay, self._log.path)
        self.warnings = list(replay.warnings)

    def __enter__(self) -> ReviewSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -------------------------------------------------------------- grading
    def grade(self, item_id: str, slice_index: int, grade: Grade | str, comment: str = "") -> GradeRecord:
        """Grade one slice; returns once the grade is on disk (fsync)."""
        item = self._item(item_id)
        grade = grade if isinstance(grade, Grade) else parse_grade(grade)
        self._check_slice(slice_index)
        comment = " ".join(str(comment).split())  # one line: the CSV and the panel show it so
        if len(comment) > MAX_COMMENT_CHARS:
            log.warning("comment cut to %d characters", MAX_COMMENT_CHARS)
            comment = comment[:MAX_COMMENT_CHARS]
        event = {"op": "grade", "item": item.id, "slice": int(slice_index), "grade": grade.value,
                 "comment": comment, "utc": utc_now()}
        self._log.append(event)
        self.state.apply(event)
        self._snapshot_if_due()
        return self._record(item.id, int(slice_index), self.state.grades[(item.id, int(slice_index))])

    def undo(self) -> Stop | None:
        """Take back the last grade not yet undone (as a logged event); the stop it concerned, or None."""
        if not self.state.history:
            return None
        event = {"op": "undo", "utc": utc_now()}
        self._log.append(event)
        self.state.apply(event)
        self._snapshot_if_due()
        return Stop(*self.state.last) if self.state.last else None

    def close(self) -> None:
        """Write a final snapshot and release the log."""
        try:
            if self._log.events_since_snapshot:
                self._log.write_snapshot(self.state.to_json())
        finally:
            self._log.close()

    # -------------------------------------------------------------- reading
    def grade_at(self, stop: Stop) -> Grade | None:
        entry = self.state.grades.get((stop.item, stop.slice_index))
        return Grade(entry[0]) if entry else None

    def comment_at(self, stop: Stop) -> str:
        entry = self.state.grades.get((stop.item, stop.slice_index))
        return entry[1] if entry else ""

    def is_graded(self, stop: Stop) -> bool:
        return (stop.item, stop.slice_index) in self.state.grades

    @property
    def last_stop(self) -> Stop | None:
        """Where the reviewer last graded or undid (resume point)."""
        return Stop(*self.state.last) if self.state.last else None

    def records(self) -> list[GradeRecord]:
        """This reviewer's grades as exchange records (``blinded_source`` '': the key is not read here)."""
        return [self._record(item, k, entry) for (item, k), entry in self.state.grades.items()]

    def _record(self, item_id: str, slice_index: int, entry: tuple[str, str, str]) -> GradeRecord:
        return _record(self.manifest, self._items[item_id], self.reviewer, slice_index, entry, "")

    def _item(self, item_id: str) -> ReviewItem:
        item = self._items.get(item_id)
        return item if item is not None else self.manifest.item_for_structure(item_id)

    def _check_slice(self, slice_index: int) -> None:
        n = self.manifest.geometry.n_slices
        if not isinstance(slice_index, (int, np.integer)) or not 0 <= int(slice_index) < n:
            raise InputError(f"slice {slice_index} is not a slice of this image (0 to {n - 1})")

    def _snapshot_if_due(self) -> None:
        if self._log.snapshot_due():
            self._log.write_snapshot(self.state.to_json())


def _record(manifest: Manifest, item: ReviewItem, reviewer: str, slice_index: int, entry: tuple[str, str, str],
            source: str) -> GradeRecord:
    grade, comment, utc = entry
    return GradeRecord(case_id=manifest.case_id, series_uid=manifest.series_uid, structure=item.structure,
                       slice_index=slice_index, z_mm=manifest.z_mm(slice_index), reviewer=reviewer,
                       grade=Grade(grade), comment=comment, graded_utc=utc, blinded_source=source)


# ------------------------------------------------------------------ reading a folder (export, summary)
def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise InputError(f"{folder} is not a review folder (no {MANIFEST_FILE}; make one with 'review start')")
    try:
        return Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} is damaged: {error}") from None


def folder_records(folder: str | Path, key_file: str | Path | None = None) -> list[GradeRecord]:
    """Every reviewer's grades of a review folder (read-only; safe while reviewers are grading).

    A blinded review needs its key (``key_file``, else the path the manifest recorded) to fill
    ``blinded_source``.
    """
    manifest = read_manifest(folder)
    roles = load_key(key_file or manifest.key_file, manifest) if manifest.blinded else {}
    items = {item.id: item for item in manifest.items}
    records = []
    for path in reviewer_logs(folder):
        state, header = replay_state(path)
        reviewer = str((header or {}).get("reviewer") or path.stem)
        for (item_id, k), entry in state.grades.items():
            if item_id in items:
                records.append(_record(manifest, items[item_id], reviewer, k, entry, roles.get(item_id, "")))
    return records


def load_key(path: str | Path, manifest: Manifest) -> dict[str, str]:
    """Item id → ``ai``/``manual`` of a blinded review, from its key file."""
    if not path:
        raise InputError(f"review {manifest.case_id} is blinded and no key is known: pass --key FILE")
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        entry = document["reviews"][manifest.review_id]
    except FileNotFoundError:
        raise InputError(f"the key {path} of blinded review {manifest.case_id} cannot be read: pass --key FILE") \
            from None
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path} holds no key for review {manifest.case_id} ({manifest.review_id})") from None
    roles = {str(item): str(role) for item, role in entry["items"].items()}
    if not set(roles.values()) <= set(SOURCES):
        raise InputError(f"{path}: key entries must be 'ai' or 'manual'")
    return roles


# ------------------------------------------------------------------ starting a review
@dataclasses.dataclass(frozen=True)
class StartRequest:
    """What ``review start`` was asked (paths as given)."""

    image: Path
    segmentations: tuple[str, ...]
    out: Path
    reviewer: str
    case_id: str | None = None
    blinded: bool = False
    key: Path | None = None
    series_uid: str | None = None
    seed: int | None = None
    """Blinding randomness; None = unpredictable (secrets).  Tests fix it."""


def start_review(request: StartRequest) -> Manifest:
    """Make the review folder (or add a reviewer to the same review); returns its manifest.

    Starting again with the same image and segmentations only registers the reviewer; a folder
    holding another review is refused (OutputError), never overwritten.
    """
    from ..image_io import load_image

    _check_request(request)
    existing = request.out / MANIFEST_FILE
    if existing.is_file():
        manifest = read_manifest(request.out)
        _check_same_review(manifest, request)
    else:
        image = load_image(request.image, series_uid=request.series_uid)
        sets = load_sources(request.segmentations, image, catalogue_for(image))
        manifest, roles, masks = build_manifest(request, image, sets)
        if request.blinded:  # first: a blinded folder without its key could never be summarised
            write_key(request.key, manifest, roles, sets)  # type: ignore[arg-type]
        _write_folder(request.out, manifest, image, masks)
    ReviewSession(request.out, request.reviewer).close()  # the reviewer's log exists from now on
    return manifest


def _check_request(request: StartRequest) -> None:
    if request.blinded and request.key is None:
        raise InputError("--blinded needs --key FILE: where the key (which contour is AI) is kept, apart from "
                         "the review folder")
    if request.key is not None and not request.blinded:
        raise InputError("--key is only for a --blinded review")
    if request.key is not None and _inside(request.key, request.out):
        raise InputError(f"the key {request.key} must be kept apart from the review folder {request.out}")
    if request.out.exists() and not request.out.is_dir():
        raise OutputError(f"--out {request.out} is a file; a review is a folder")
    if request.out.is_dir() and not (request.out / MANIFEST_FILE).exists() and any(request.out.iterdir()):
        raise OutputError(f"--out {request.out} is a folder with other files in it; choose a new or empty folder")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _check_same_review(manifest: Manifest, request: StartRequest) -> None:
    if manifest.fingerprint and manifest.fingerprint != _inputs_fingerprint(request):
        raise OutputError(f"--out {request.out} holds the review of other inputs (case {manifest.case_id}); "
                          "choose another folder")
    if request.case_id and request.case_id != manifest.case_id:
        raise OutputError(f"--out {request.out} holds case {manifest.case_id}, not {request.case_id}")


def _inputs_fingerprint(request: StartRequest) -> str:
    """Hash of the inputs (resolved paths, blinding): a second reviewer's ``start`` must name the same."""
    parts = [str(request.image.resolve()), *(str(Path(s.split("=", 1)[-1]).resolve()) for s in request.segmentations),
             str(request.blinded), str(request.series_uid or "")]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def catalogue_for(image: Volume) -> tuple[Structure, ...]:
    """Structures that name contours: the family of the image's modality, else every family's."""
    from ..families import families, family_for_modality

    family = family_for_modality(image.modality)
    if family is not None:
        return family.structures
    return tuple(s for f in families() for s in f.structures)


def case_id_for(image: Volume, requested: str | None) -> str:
    """``requested`` (refused when it is the patient's id or name), else a hash of the series UID."""
    meta = image.meta
    if requested:
        case_id = requested.strip()
        identifiers = {str(meta.get(k, "")).strip().lower() for k in ("patient_id", "patient_name")} - {""}
        if not case_id or case_id.lower() in identifiers or case_id.lower().replace(" ", "^") in identifiers:
            raise InputError("--case-id must not be a patient identifier (it equals the patient's ID or name)")
        return case_id
    seed = str(meta.get("series_instance_uid") or meta.get("path") or id(image))
    return CASE_ID_PREFIX + hashlib.sha256(seed.encode("utf-8")).hexdigest()[:CASE_ID_HASH_CHARS]


def image_geometry(image: Volume) -> ImageGeometry:
    """Grid and per-slice z (mm along the slice normal; DICOM slice positions when known)."""
    normal = image.slice_normal
    positions = image.meta.get("slice_positions")
    if positions is not None and len(positions) == image.shape[0]:
        centres = np.asarray(positions, dtype=np.float64)
    else:
        k = np.arange(image.shape[0], dtype=np.float64)
        centres = image.index_to_physical(np.stack([np.zeros_like(k), np.zeros_like(k), k], axis=1))
    return ImageGeometry(shape=image.shape, index_to_lps=image.index_to_lps,
                         z_mm=tuple(float(z) for z in centres @ normal))


def mask_slices(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[tuple[float, float], ...]]:
    """Slices where a (z, y, x) mask has voxels, and its (column, row) centre on each."""
    k, j, i = np.nonzero(mask)
    if k.size == 0:
        return (), ()
    counts = np.bincount(k, minlength=mask.shape[0])
    present = np.flatnonzero(counts)
    rows = np.bincount(k, weights=j, minlength=mask.shape[0])[present] / counts[present]
    columns = np.bincount(k, weights=i, minlength=mask.shape[0])[present] / counts[present]
    return tuple(int(s) for s in present), tuple((float(c), float(r)) for c, r in zip(columns, rows))


ItemMasks = dict[str, np.ndarray]


def build_manifest(request: StartRequest, image: Volume, sets: Sequence[ContourSet]) \
        -> tuple[Manifest, dict[str, str], ItemMasks]:
    """The manifest of a new review, per item id its source role (the blinding key) and its mask."""
    rng = random.Random(request.seed) if request.seed is not None else random.SystemRandom()
    items, roles, masks = (_blinded_items(sets, rng) if request.blinded else _open_items(sets))
    if not items:
        raise InputError("no segmentation has any contour: nothing to review")
    flags = () if request.blinded else tuple(flag.to_json() for s in sets for flag in s.flags)
    sources = () if request.blinded else tuple({"role": s.role, "kind": s.kind, "path": str(s.path)} for s in sets)
    manifest = Manifest(
        review_id=secrets.token_hex(8), case_id=case_id_for(image, request.case_id),
        series_uid=str(image.meta.get("series_instance_uid", "")), image_path=str(request.image.resolve()),
        geometry=image_geometry(image), items=tuple(items), flags=flags, blinded=request.blinded,
        key_file=str(request.key.resolve()) if request.key else "", created_utc=utc_now(), tool_version=__version__,
        sources=sources, fingerprint=_inputs_fingerprint(request))
    return manifest, roles, masks


def _open_items(sets: Sequence[ContourSet]) -> tuple[list[ReviewItem], dict[str, str], ItemMasks]:
    """Items of an open review: the structure's name; with two sources, "name (ai)" / "name (manual)"."""
    items, roles, masks = [], {}, {}
    for contour_set in sets:
        for contour in contour_set.contours:
            slices, centres = mask_slices(contour.mask)
            if not slices:
                log.warning("%s (%s) is empty: nothing to grade", contour.name, contour_set.role)
                continue
            name = contour.name if len(sets) == 1 else f"{contour.name} ({contour_set.role})"
            items.append(ReviewItem(id=name, structure=name, label=name, color=contour.color, slices=slices,
                                    centres_ij=centres, flag_structure=contour.name if contour_set.flags else ""))
            roles[name], masks[name] = contour_set.role, contour.mask
    return items, roles, masks


def _blinded_items(sets: Sequence[ContourSet], rng: random.Random) \
        -> tuple[list[ReviewItem], dict[str, str], ItemMasks]:
    """Blinded items: per structure its sources in random order as "name/A", "name/B", one colour each
    structure, all items in random order; the roles go to the key only."""
    by_structure: dict[str, list[tuple[str, Any]]] = {}
    for contour_set in sets:
        for contour in contour_set.contours:
            by_structure.setdefault(contour.name, []).append((contour_set.role, contour))
    items, roles, masks = [], {}, {}
    for name, entries in by_structure.items():
        rng.shuffle(entries)
        colour = entries[0][1].color
        for letter, (role, contour) in zip(BLIND_LETTERS, entries):
            slices, centres = mask_slices(contour.mask)
            if not slices:
                continue  # an empty contour is absent for the reviewer too (the key still says which)
            item_id = f"{name}/{letter}"
            items.append(ReviewItem(id=item_id, structure=name, label=f"{name} - contour {letter}", color=colour,
                                    slices=slices, centres_ij=centres))
            roles[item_id], masks[item_id] = role, contour.mask
    rng.shuffle(items)
    return items, roles, masks


def _write_folder(out: Path, manifest: Manifest, image: Volume, masks: ItemMasks) -> None:
    """contours.seg.nrrd, then review.json last (its presence marks a complete folder)."""
    from ..segfile import SegmentSpec, write_segments_nrrd

    segments = [SegmentSpec(id=item.id, name=item.id, color=tuple(c / 255.0 for c in item.color),  # type: ignore
                            terminology="", mask=masks[item.id], label_value=number)
                for number, item in enumerate(manifest.items, start=1)]
    out.mkdir(parents=True, exist_ok=True)
    write_segments_nrrd(out / CONTOURS_FILE, image.with_array(np.zeros(image.shape, np.uint8)), segments)
    write_text_atomic(out / MANIFEST_FILE, json.dumps(manifest.to_json(), indent=1, ensure_ascii=False) + "\n")


def write_key(path: Path, manifest: Manifest, roles: Mapping[str, str], sets: Sequence[ContourSet]) -> None:
    """Add this review's key to ``path`` (one key file may serve a whole cohort), atomically."""
    document: dict[str, Any] = {"format": KEY_FORMAT, "format_version": 1, "reviews": {}}
    if path.exists():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            document.setdefault("reviews", {})
        except (OSError, ValueError) as error:
            raise InputError(f"--key {path} exists but is not a review key: {error}") from None
        if document.get("format") != KEY_FORMAT:
            raise InputError(f"--key {path} exists and is not a review key; choose another file")
    document["reviews"][manifest.review_id] = {
        "case_id": manifest.case_id, "created_utc": manifest.created_utc, "items": dict(roles),
        "sources": [{"role": s.role, "kind": s.kind, "path": str(s.path.resolve())} for s in sets]}
    write_text_atomic(path, json.dumps(document, indent=1, ensure_ascii=False) + "\n")

