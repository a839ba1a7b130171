"""Per-slice QA flags of ``segment``'s ``report.json``, read tolerantly, for "flagged slices first".

``report.json`` has carried its flags in more than one shape, and another is being added; each
is accepted (see :mod:`CervixAutoSegLib.report`), and unknown entries are skipped, never fatal:

* ``qa.flags``: ``[{"structure", "kind", "slices": [k | [first, last]], "message"}]`` — format 1's
  structure-level hints; ``[first, last]`` is an inclusive range (a gap, or an area jump between
  two neighbouring slices);
* ``qa.slices``: ``[{"structure", "slice" | "slice_index", "score", "flagged", "reasons"}]`` — a
  score per slice (entries with ``"flagged": false`` are not flags);
* a mapping ``{structure: [{"slice_index" | "slice", "reason" | "kind" | "message", "score"}]}``
  under ``qa.flags`` or ``qa.slice_flags``.

Slice indices are the image array's axis-0 indices (0-based), the grades CSV's ``slice_index``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
SLICE_KEYS = ("slice_index", "slice", "k")
REASON_KEYS = ("reasons", "reason", "message", "kind")
_FLAG_LISTS = ("flags", "slices", "slice_flags")
_MAX_RANGE = 10_000
"""A [first, last] range longer than this is not a slice range (a damaged report); skipped."""


@dataclasses.dataclass(frozen=True)
class SliceFlag:
    """A QA hint on one slice of one structure; ``score`` in [0, 1] when the report gives one."""

    structure: str
    slice_index: int
    reason: str
    score: float | None = None

    def to_json(self) -> dict:
        return {"structure": self.structure, "slice_index": self.slice_index, "reason": self.reason,
                "score": self.score}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SliceFlag:
        score = document.get("score")
        return cls(str(document["structure"]), int(document["slice_index"]), str(document.get("reason", "")),
                   None if score is None else float(score))


def read_report_flags(path: str | Path) -> list[SliceFlag]:
    """The flags of a ``report.json`` file ([] when it is missing or unreadable, with a warning)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        log.warning("QA flags not read from %s: %s", path, error)
        return []
    return report_flags(report)


def report_flags(report: Mapping[str, Any]) -> list[SliceFlag]:
    """Every flagged (structure, slice) of a report document, merged: reasons joined, highest score kept."""
    qa = report.get("qa") if isinstance(report, Mapping) else None
    if not isinstance(qa, Mapping):
        return []
    merged: dict[tuple[str, int], SliceFlag] = {}
    for key in _FLAG_LISTS:
        for flag in _flags_of(qa.get(key)):
            merged[(flag.structure, flag.slice_index)] = _merge(merged.get((flag.structure, flag.slice_index)), flag)
    return sorted(merged.values(), key=lambda f: (f.structure, f.slice_index))


def _merge(old: SliceFlag | None, new: SliceFlag) -> SliceFlag:
    if old is None:
        return new
    reasons = old.reason.split("; ") + [r for r in new.reason.split("; ") if r and r not in old.reason.split("; ")]
    scores = [s for s in (old.score, new.score) if s is not None]
    return dataclasses.replace(old, reason="; ".join(r for r in reasons if r), score=max(scores) if scores else None)


def _flags_of(entries: Any) -> Iterator[SliceFlag]:
    if isinstance(entries, Mapping):  # {structure: [entries]}
        for structure, listed in entries.items():
            if isinstance(listed, list):
                for entry in listed:
                    if isinstance(entry, Mapping):
                        yield from _entry_flags({"structure": structure, **entry})
    elif isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, Mapping):
                yield from _entry_flags(entry)


def _entry_flags(entry: Mapping[str, Any]) -> Iterator[SliceFlag]:
    """The flags of one entry; nothing for an unflagged score entry or an entry without slices."""
    structure = entry.get("structure")
    if not isinstance(structure, str) or entry.get("flagged", True) is False:
        return
    reason, score = _reason(entry), _score(entry.get("score"))
    for slice_index in _slices(entry):
        yield SliceFlag(structure, slice_index, reason, score)


def _reason(entry: Mapping[str, Any]) -> str:
    for key in REASON_KEYS:
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value:
            return "; ".join(str(v) for v in value)
    return "flagged by QA"


def _score(value: Any) -> float | None:
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def _slices(entry: Mapping[str, Any]) -> Iterable[int]:
    for key in SLICE_KEYS:
        if _is_index(entry.get(key)):
            return [int(entry[key])]
    found: list[int] = []
    for item in entry.get("slices") or []:
        if _is_index(item):
            found.append(int(item))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(_is_index(v) for v in item):
            first, last = sorted(int(v) for v in item)
            if last - first <= _MAX_RANGE:
                found.extend(range(first, last + 1))
    return found


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
