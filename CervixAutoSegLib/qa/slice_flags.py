"""A flag score per slice and structure, with reasons a physician can read.

Each signal of :mod:`.slice_signals` is compared with its threshold from the model card
(:class:`~.config.QAConfig`): ``e = value / threshold`` and the signal's score is ``e / (1 + e)``,
so 0.5 exactly at the threshold, towards 1 far above it.  A slice's score is its largest signal
score and it is *flagged* when that reaches :data:`FLAG_SCORE` (some signal at or above its
threshold); the reasons list every signal at or above its threshold, worst first.  Reviewers see
flagged slices first, highest score first (:func:`review_order`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .config import QAConfig
from .maps import BoxedMap, EvidenceMaps, maps_for
from .slice_signals import SIGNALS, StructureSlices, structure_slices

FLAG_SCORE = 0.5
SIGNAL_DECIMALS = 3
_TINY = 1e-9


@dataclasses.dataclass
class SliceAssessment:
    """One structure on one slice (``slice`` = input array axis-0 index, 0-based)."""

    structure: str
    slice: int
    score: float
    reasons: list[str]
    signals: dict[str, float]
    z_mm: float | None = None
    position_lps_mm: list[float] | None = None

    @property
    def flagged(self) -> bool:
        return self.score >= FLAG_SCORE

    def to_json(self) -> dict:
        return {"structure": self.structure, "slice": self.slice, "z_mm": self.z_mm, "score": round(self.score, 3),
                "flagged": self.flagged, "reasons": self.reasons, "position_lps_mm": self.position_lps_mm,
                "signals": self.signals}


def signal_score(value: float, threshold: float) -> float:
    """``e / (1 + e)`` with ``e = value / threshold``: 0 for 0, 0.5 at the threshold."""
    if not np.isfinite(value) or value <= 0:
        return 0.0
    ratio = value / max(threshold, _TINY)
    return ratio / (1.0 + ratio)


def score_structure(slices: StructureSlices, config: QAConfig) -> list[SliceAssessment]:
    """Score and reasons of every slice of the structure's extent."""
    assessments = []
    for index, k in enumerate(slices.slices.tolist()):
        scored = []
        for name in SIGNALS:
            value = float(slices.signals[name][index])
            threshold = config.threshold(slices.name, name)
            score = signal_score(value, threshold)
            if score >= FLAG_SCORE:
                scored.append((score, reason(name, value, threshold, slices, index)))
        scored.sort(key=lambda item: -item[0])
        values = {name: round(float(slices.signals[name][index]), SIGNAL_DECIMALS) for name in SIGNALS
                  if np.isfinite(slices.signals[name][index])}
        best = max((signal_score(float(slices.signals[n][index]), config.threshold(slices.name, n))
                    for n in SIGNALS), default=0.0)
        assessments.append(SliceAssessment(slices.name, int(k), best, [text for _, text in scored], values))
    return assessments


def _neighbour_text(slices: StructureSlices, index: int) -> str:
    counts = slices.pieces
    below = int(counts[index - 1]) if index > 0 else "-"
    above = int(counts[index + 1]) if index + 1 < len(counts) else "-"
    return f"{int(counts[index])} piece(s) here, {below} and {above} on the neighbouring slices"


def _end_text(slices: StructureSlices, index: int, value: float) -> str:
    return (f"{'first' if index == 0 else 'last'} slice still has {value:.0%} of the next slice's area: "
            "does not taper (cut off, or one slice too far)")


_REASONS: dict[str, Callable[[float, float, StructureSlices, int], str]] = {
    "gap": lambda v, t, s, i: "missing on this slice, present on slices before and after",
    "centroid_jump_mm": lambda v, t, s, i: f"centre {v:.1f} mm off where its neighbours put it (threshold {t:.1f} mm)",
    "area_change": lambda v, t, s, i: f"area {np.exp(v):.1f}x off what its neighbours predict "
                                      f"(threshold {np.exp(t):.1f}x)",
    "overlap_loss": lambda v, t, s, i: f"overlaps its neighbouring slices by only {1 - v:.0%}",
    "orphan_area_mm2": lambda v, t, s, i: f"a {v:.0f} mm² piece that continues on neither neighbouring slice",
    "pieces_change": lambda v, t, s, i: _neighbour_text(s, i),
    "end_area_ratio": lambda v, t, s, i: _end_text(s, i, v),
    "volume_end": lambda v, t, s, i: "reaches the edge of the scan: may continue outside it",
    "crop_border": lambda v, t, s, i: "touches the border of the network's field of view: may be cut off",
    "border_contact": lambda v, t, s, i: f"{v:.0%} of its outline on the border of the structure it lies in",
    "uncertainty_inside": lambda v, t, s, i: f"network unsure inside the contour ({v:.2f}, threshold {t:.2f})",
    "uncertainty_contour": lambda v, t, s, i: f"network unsure along the contour ({v:.2f}, threshold {t:.2f})",
    "flip_disagreement": lambda v, t, s, i: f"plain and mirrored passes disagree on {v:.0%} of its area",
}


def reason(signal: str, value: float, threshold: float, slices: StructureSlices, index: int) -> str:
    """One line saying what is suspicious about the slice (without the structure's name)."""
    return _REASONS[signal](value, threshold, slices, index)


def assess_slices(labels: Any, structures: Sequence[Any], config: QAConfig, *,
                  evidence: Sequence[EvidenceMaps] | None = None, field_of_view_border: np.ndarray | BoxedMap | None = None,
                  boxes: Sequence[tuple | None] | None = None) -> tuple[list[StructureSlices], list[SliceAssessment]]:
    """Signals and scores of every structure in ``labels`` (a :class:`~CervixAutoSegLib.volume.Volume`).

    Structure regions and containers follow the post-processing rules (an MR organ covers its
    tumour; the tumour lies within the organ).
    """
    from ..cropping import label_boxes
    from ..postprocess import rules_for

    array = np.asarray(labels.array)
    if boxes is None:
        boxes = label_boxes(array)
    rules = {rule.value: rule for rule in rules_for(structures)}
    spacing_xy = (float(labels.spacing[0]), float(labels.spacing[1]))
    every, assessments = [], []
    for structure in structures:
        rule = rules[structure.value]
        container = ()
        if rule.within is not None:
            container = (rule.within, *rules[rule.within].includes)
        found = structure_slices(array, structure.name, structure.value, (structure.value, *rule.includes), spacing_xy,
                                 boxes=boxes, evidence=maps_for(evidence, structure.value), container=container,
                                 field_of_view_border=field_of_view_border)
        if found is None:
            continue
        every.append(found)
        scored = score_structure(found, config)
        _place(scored, found, labels)
        assessments.extend(scored)
    return every, assessments


def _place(assessments: list[SliceAssessment], slices: StructureSlices, labels: Any) -> None:
    """Each slice's position along the slice normal and the structure's centre on it (LPS mm), for
    the review CSV's ``z_mm`` and for jumping the Slicer views there.  A gap slice gets the centre
    of the nearest slices that have the structure."""
    spacing = np.asarray(labels.spacing, dtype=float)
    centres = slices.centroid_yx_mm / spacing[[1, 0]]  # (row, column) indices, NaN on gaps
    known = np.flatnonzero(np.isfinite(centres[:, 0]))
    if known.size == 0:
        return
    nearest = known[np.argmin(np.abs(known[None, :] - np.arange(len(centres))[:, None]), axis=1)]
    centres = np.where(np.isfinite(centres), centres, centres[nearest])
    ijk = np.stack([centres[:, 1], centres[:, 0], slices.slices.astype(float)], axis=1)
    points = labels.index_to_physical(ijk)
    along = points @ labels.slice_normal
    for index, entry in enumerate(assessments):
        entry.position_lps_mm = [round(float(v), 2) for v in points[index]]
        entry.z_mm = round(float(along[index]), 2)


def review_order(slices: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """(structure, slice) of report.json ``qa.slices`` entries, flagged first, highest score first
    (then structure, slice): the order a reviewer should grade them in."""
    ranked = sorted(slices, key=lambda e: (not e["flagged"], -e["score"], e["structure"], e["slice"]))
    return [(entry["structure"], int(entry["slice"])) for entry in ranked]
