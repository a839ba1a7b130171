"""Knowing when to distrust a result: per-slice flags, per-case plausibility, and where flip TTA pays.

Module map:

* :mod:`.maps` — the network's evidence on the input grid (softmax uncertainty, plain-vs-mirrored
  disagreement) that runners hand over;
* :mod:`.slice_signals` — per slice and structure: neighbour consistency, islands, ends, uncertainty;
* :mod:`.slice_flags` — a flag score per slice with reasons; the reviewers' "flagged first" order;
* :mod:`.case_features`, :mod:`.plausibility` — volume, extent, pieces and position of each structure
  and what the image looks like, against ranges learned from training data; the verdicts;
* :mod:`.config` — the model card's ``qa`` section (thresholds, ranges, selective flip TTA);
* :mod:`.calibrate` — fitting thresholds on cases with known truth (``cervixautoseg qa-calibrate``);
* :mod:`.corrupt` — deliberate corruptions of a label map, to measure what the flags catch.

:func:`assess` is what ``segment`` calls; its result is report.json's ``qa`` section (with the
older structure-level ``flags`` added by :mod:`CervixAutoSegLib.report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import QAConfig
from .maps import BoxedMap, EvidenceMaps
from .plausibility import CHECK, IMPLAUSIBLE, PLAUSIBLE, VERDICTS, judge_case, worst
from .slice_flags import FLAG_SCORE, assess_slices, review_order

__all__ = ["CHECK", "IMPLAUSIBLE", "PLAUSIBLE", "VERDICTS", "BoxedMap", "EvidenceMaps", "QAConfig", "assess", "review_order"]


def assess(image: Any, labels: Any, structures: Sequence[Any], card_qa: "dict | QAConfig | None", *,
           evidence: Sequence[EvidenceMaps] | None = None, field_of_view_border: np.ndarray | BoxedMap | None = None,
           boxes: Sequence[Any] | None = None) -> dict:
    """Per-slice flags and per-case plausibility of ``labels`` (a label Volume on the grid of ``image``).

    ``card_qa``: the model card's ``qa`` section, or a :class:`QAConfig` (``QAConfig.from_card(card)`` also
    knows whether the card's thresholds were calibrated for its present weights).

    Returns::

        {"verdict": "plausible" | "check" | "implausible",
         "reasons": ["one line each"],
         "plausibility": {...per structure and input, see plausibility.judge_case...},
         "slices": [{"structure", "slice", "z_mm", "score", "flagged", "reasons", "position_lps_mm",
                     "signals"}, ...],     # every slice of every structure's extent
         "flagged_slices": int, "thresholds": {"calibrated": bool, "stale": bool, "flag_score": 0.5},
         "evidence": bool}                 # whether the network's own evidence was used
    """
    from ..cropping import label_boxes

    config = card_qa if isinstance(card_qa, QAConfig) else QAConfig.from_json(card_qa or {})
    array = np.asarray(labels.array)
    if boxes is None:  # once: the full-volume scan is the dearest step on a large CT
        boxes = label_boxes(array)
    per_structure, slices = assess_slices(labels, structures, config, evidence=evidence,
                                          field_of_view_border=field_of_view_border, boxes=boxes)
    plausibility = judge_case(image, array, structures, config.plausibility, boxes)
    _scan_edges(plausibility, per_structure)
    flagged = [entry for entry in slices if entry.flagged]
    return {
        "verdict": plausibility["verdict"],
        "reasons": plausibility["reasons"],
        "plausibility": plausibility,
        "slices": [entry.to_json() for entry in slices],
        "flagged_slices": len(flagged),
        "thresholds": {"calibrated": config.calibrated, "stale": config.stale, "flag_score": FLAG_SCORE},
        "evidence": bool(evidence),
    }


def _scan_edges(plausibility: dict, per_structure: Sequence[Any]) -> None:
    """A structure on the first or last image slice may continue outside the scan: the field of
    view may not cover the pelvis, so the input calls for a check."""
    touching = [s.name for s in per_structure if np.nansum(s.signals["volume_end"]) > 0]
    if not touching:
        return
    reason = (f"{', '.join(touching)} reach{'es' if len(touching) == 1 else ''} the first or last image slice: "
              "the scan may not cover the whole pelvis")
    entry = plausibility["input"]
    entry["reasons"].append(reason)
    entry["verdict"] = worst((entry["verdict"], CHECK))
    plausibility["reasons"].append(reason)
    plausibility["verdict"] = worst((plausibility["verdict"], CHECK))
