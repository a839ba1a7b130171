"""The grading scale of the ResAU-Net paper's clinical evaluation, plus "not assessable".

Liu et al. graded every slice of the automatic contours as (paper, "Model evaluation by radiation
oncologists"):

* **acceptable** — perfect, completely acceptable for treatment;
* **minor** revision — a few minor edits, no significant clinical impact without correction;
* **major** revision — significant revision needed before treatment planning;
* **unacceptable** — to be redrawn.

"Acceptable" and "minor revision" together are *clinically acceptable* (the paper's Table 2 text).
A reviewer may also say a slice is **not assessable** (artefacts, out of the field of view): such
grades are stored and exported, but count in no percentage and in no agreement statistic.

The four grades are ordinal, in the order above (rank 1..4), which is what the weighted kappas and
Krippendorff's ordinal alpha use.
"""

from __future__ import annotations

import enum

from ..errors import InputError


class Grade(str, enum.Enum):
    """One slice's grade; ``value`` is the exchange-format spelling (grades CSV ``grade`` column)."""

    ACCEPTABLE = "acceptable"
    MINOR = "minor"
    MAJOR = "major"
    UNACCEPTABLE = "unacceptable"
    NOT_ASSESSABLE = "not_assessable"

    @property
    def rank(self) -> int | None:
        """1 (acceptable) .. 4 (unacceptable); None for not assessable."""
        return RANKS.get(self)

    @property
    def label(self) -> str:
        """The paper's column heading."""
        return LABELS[self]

    @property
    def clinically_acceptable(self) -> bool:
        return self in CLINICALLY_ACCEPTABLE

    @property
    def flags_segment(self) -> bool:
        """Major and unacceptable grades set the segment's status to "flagged" in Slicer."""
        return self in FLAGGING


ORDINAL_GRADES: tuple[Grade, ...] = (Grade.ACCEPTABLE, Grade.MINOR, Grade.MAJOR, Grade.UNACCEPTABLE)
"""The four grades of the paper, best first: Table 2's columns, the ordinal categories."""
ALL_GRADES: tuple[Grade, ...] = (*ORDINAL_GRADES, Grade.NOT_ASSESSABLE)
RANKS = {grade: rank for rank, grade in enumerate(ORDINAL_GRADES, start=1)}
CLINICALLY_ACCEPTABLE = frozenset({Grade.ACCEPTABLE, Grade.MINOR})
FLAGGING = frozenset({Grade.MAJOR, Grade.UNACCEPTABLE})
LABELS = {
    Grade.ACCEPTABLE: "Acceptable",
    Grade.MINOR: "Minor revision",
    Grade.MAJOR: "Major revision",
    Grade.UNACCEPTABLE: "Unacceptable",
    Grade.NOT_ASSESSABLE: "Not assessable",
}
DEFINITIONS = {
    Grade.ACCEPTABLE: "perfect; completely acceptable for treatment",
    Grade.MINOR: "a few minor edits; no significant clinical impact without correction",
    Grade.MAJOR: "significant revision needed before treatment planning",
    Grade.UNACCEPTABLE: "unacceptable; to be redrawn",
    Grade.NOT_ASSESSABLE: "cannot be judged on this slice (counts in no percentage)",
}
HOTKEYS = {"1": Grade.ACCEPTABLE, "2": Grade.MINOR, "3": Grade.MAJOR, "4": Grade.UNACCEPTABLE,
           "0": Grade.NOT_ASSESSABLE, "N": Grade.NOT_ASSESSABLE}
"""Panel hotkeys (active only in review mode: Segment Editor uses the number keys too)."""

_SPELLINGS = {
    **{grade.value: grade for grade in ALL_GRADES},
    **{grade.label.lower(): grade for grade in ALL_GRADES},
    **{str(rank): grade for grade, rank in RANKS.items()},
    "not acceptable": Grade.UNACCEPTABLE,  # Table 2's heading
    "minor revision": Grade.MINOR,
    "major revision": Grade.MAJOR,
    "not assessable": Grade.NOT_ASSESSABLE,
    "n/a": Grade.NOT_ASSESSABLE,
    "na": Grade.NOT_ASSESSABLE,
    "0": Grade.NOT_ASSESSABLE,
}
"""Spellings a spreadsheet may use (case-insensitive; '-' and '_' read as spaces except in the values)."""


def parse_grade(text: str) -> Grade:
    """``text`` → Grade: the exchange value, the paper's label, a hotkey digit or a common synonym.

    Raises:
        InputError: anything else (the message lists the accepted values).
    """
    key = " ".join(str(text).strip().lower().split())
    grade = _SPELLINGS.get(key) or _SPELLINGS.get(key.replace("-", " ")) or _SPELLINGS.get(key.replace(" ", "_"))
    if grade is None:
        raise InputError(f"unknown grade {text!r}: use one of {', '.join(g.value for g in ALL_GRADES)}")
    return grade
