"""Plain records of a review: a grade, the items under review, the image geometry, the manifest.

No I/O here beyond (de)serialising to JSON-ready dicts; :mod:`.session` and :mod:`.storage` do the
reading and writing.  Slice indices are array axis 0 of the image as read (0-based); positions are
LPS mm; ``index_to_lps`` maps homogeneous (i, j, k, 1) = (column, row, slice, 1) to LPS mm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .grades import Grade

MANIFEST_FORMAT = "cervixautoseg-review"
MANIFEST_VERSION = 1
KEY_FORMAT = "cervixautoseg-review-key"
AI, MANUAL = "ai", "manual"
SOURCES = (AI, MANUAL)
"""Values of the ``blinded_source`` column (and of a contour set's role)."""

CSV_COLUMNS = ("case_id", "series_uid", "structure", "slice_index", "z_mm", "reviewer", "grade", "comment",
               "graded_utc", "blinded_source")
"""The grades exchange format of ../shared/DESIGN.md, in its column order."""


@dataclasses.dataclass(frozen=True)
class GradeRecord:
    """One graded slice as the exchange format holds it (one CSV row).

    ``z_mm``: the slice's position along the slice normal (mm), None when unknown (a CSV from
    elsewhere).  ``blinded_source``: '' unless the review was blinded, then ``ai`` or ``manual``
    (from the key; the reviewer never saw it).
    """

    case_id: str
    series_uid: str
    structure: str
    slice_index: int
    z_mm: float | None
    reviewer: str
    grade: Grade
    comment: str
    graded_utc: str
    blinded_source: str = ""

    @property
    def key(self) -> tuple[str, str, int, str]:
        """What agreement pairs reviewers on: (case_id, structure, slice_index, blinded_source)."""
        return (self.case_id, self.structure, self.slice_index, self.blinded_source)


@dataclasses.dataclass(frozen=True)
class ImageGeometry:
    """The reviewed image's grid: enough to name slices and jump the views without reading voxels.

    Attributes:
        shape: (nz, ny, nx) of the image array.
        index_to_lps: 4x4, (i, j, k, 1) → LPS mm.
        z_mm: per slice k, its position along the slice normal (mm); from the DICOM slice
            positions when the image came from DICOM (exact for non-uniform spacing).
    """

    shape: tuple[int, int, int]
    index_to_lps: np.ndarray
    z_mm: tuple[float, ...]

    @property
    def n_slices(self) -> int:
        return self.shape[0]

    def slice_position_lps(self, slice_index: int, column: float | None = None, row: float | None = None) -> np.ndarray:
        """LPS mm of (column, row) on slice ``slice_index`` (default: the slice's centre)."""
        nz, ny, nx = self.shape
        i = (nx - 1) / 2.0 if column is None else column
        j = (ny - 1) / 2.0 if row is None else row
        return (self.index_to_lps @ np.array([i, j, float(slice_index), 1.0]))[:3]

    def to_json(self) -> dict:
        return {"shape_zyx": list(self.shape), "index_to_lps": np.asarray(self.index_to_lps).round(6).tolist(),
                "z_mm": [round(z, 4) for z in self.z_mm]}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ImageGeometry:
        return cls(shape=tuple(int(n) for n in document["shape_zyx"]),  # type: ignore[arg-type]
                   index_to_lps=np.asarray(document["index_to_lps"], dtype=np.float64),
                   z_mm=tuple(float(z) for z in document["z_mm"]))


@dataclasses.dataclass(frozen=True)
class ReviewItem:
    """One contour under review: a structure of one source.

    Attributes:
        id: stable key in the reviewer logs ("Bladder"; "Bladder (manual)" in an open two-source
            review; "Bladder/A" when blinded — nothing in it tells the source).
        structure: the grades CSV ``structure`` value (TG-263 name; an open two-source review
            appends the source, so AI and manual rows stay apart).
        label: what the reviewer reads in the panel.
        color: display colour, RGB 0-255 (blinded: the same for every source of a structure).
        slices: slice indices where the contour has voxels, ascending.
        centres_ij: per entry of ``slices``, the contour's centre there as (column, row) indices.
        flag_structure: the structure name report.json flags refer to ('' = no flags apply).
    """

    id: str
    structure: str
    label: str
    color: tuple[int, int, int]
    slices: tuple[int, ...]
    centres_ij: tuple[tuple[float, float], ...]
    flag_structure: str = ""

    def centre_near(self, slice_index: int) -> tuple[float, float] | None:
        """The contour centre on ``slice_index``, else on the nearest slice that has it (None: empty)."""
        if not self.slices:
            return None
        nearest = int(np.argmin(np.abs(np.asarray(self.slices) - slice_index)))
        return self.centres_ij[nearest]

    def to_json(self) -> dict:
        return {"id": self.id, "structure": self.structure, "label": self.label, "color": list(self.color),
                "slices": list(self.slices), "centres_ij": [[round(c, 2), round(r, 2)] for c, r in self.centres_ij],
                "flag_structure": self.flag_structure}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ReviewItem:
        return cls(id=str(document["id"]), structure=str(document["structure"]), label=str(document["label"]),
                   color=tuple(int(c) for c in document["color"]),  # type: ignore[arg-type]
                   slices=tuple(int(k) for k in document["slices"]),
                   centres_ij=tuple((float(c), float(r)) for c, r in document["centres_ij"]),
                   flag_structure=str(document.get("flag_structure", "")))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """``review.json``: what is reviewed; written once by ``review start``, never by graders.

    In a blinded review nothing here says which item is AI and which manual: that is in the key
    file (kept apart, :attr:`key_file` only points at it).
    """

    review_id: str
    case_id: str
    series_uid: str
    image_path: str
    geometry: ImageGeometry
    items: tuple[ReviewItem, ...]
    flags: tuple[Mapping[str, Any], ...] = ()
    blinded: bool = False
    key_file: str = ""
    created_utc: str = ""
    tool_version: str = ""
    sources: tuple[Mapping[str, str], ...] = ()
    """Open reviews: [{"role", "kind", "path"}]; blinded: empty (the key holds them)."""
    fingerprint: str = ""
    """Hash of the inputs ``review start`` was given: another reviewer's start must give the same."""

    def item(self, item_id: str) -> ReviewItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise InputError(f"no structure {item_id!r} in this review; it has {', '.join(self.item_ids)}")

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(item.id for item in self.items)

    def item_for_structure(self, name: str) -> ReviewItem:
        """The item a command-line ``--structure`` names: its id, its CSV structure or its label."""
        for item in self.items:
            if name in (item.id, item.structure, item.label):
                return item
        lowered = name.lower()
        matches = [item for item in self.items if lowered in (item.id.lower(), item.structure.lower())]
        if len(matches) == 1:
            return matches[0]
        raise InputError(f"no structure {name!r} in this review; it has {', '.join(self.item_ids)}")

    def z_mm(self, slice_index: int) -> float | None:
        z = self.geometry.z_mm
        return z[slice_index] if 0 <= slice_index < len(z) else None

    def to_json(self) -> dict:
        return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "review_id": self.review_id,
                "case_id": self.case_id, "series_uid": self.series_uid, "created_utc": self.created_utc,
                "tool_version": self.tool_version, "image": {"path": self.image_path, **self.geometry.to_json()},
                "blinded": self.blinded, "key_file": self.key_file, "sources": [dict(s) for s in self.sources],
                "fingerprint": self.fingerprint,
                "items": [item.to_json() for item in self.items], "flags": [dict(f) for f in self.flags]}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Manifest:
        if document.get("format") != MANIFEST_FORMAT:
            raise InputError("not a review manifest (review.json of 'cervixautoseg review start')")
        if int(document.get("format_version", 0)) > MANIFEST_VERSION:
            raise InputError(f"review.json format {document['format_version']} is newer than this version reads "
                             f"({MANIFEST_VERSION}): update CervixAutoSeg")
        image = document["image"]
        return cls(review_id=str(document["review_id"]), case_id=str(document["case_id"]),
                   series_uid=str(document.get("series_uid", "")), image_path=str(image.get("path", "")),
                   geometry=ImageGeometry.from_json(image),
                   items=tuple(ReviewItem.from_json(item) for item in document["items"]),
                   flags=tuple(document.get("flags", ())), blinded=bool(document.get("blinded", False)),
                   key_file=str(document.get("key_file", "")), created_utc=str(document.get("created_utc", "")),
                   tool_version=str(document.get("tool_version", "")),
                   sources=tuple(document.get("sources", ())), fingerprint=str(document.get("fingerprint", "")))


def sorted_records(records: Sequence[GradeRecord]) -> list[GradeRecord]:
    """Records in a stable reading order: case, structure, source, slice, reviewer."""
    return sorted(records, key=lambda r: (r.case_id, r.structure, r.blinded_source, r.slice_index, r.reviewer))
