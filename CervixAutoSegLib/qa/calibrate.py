"""Fitting the slice-flag thresholds on cases with known truth, and measuring how well the flags do.

A calibration case is a result (labels + its report's ``qa.slices``: every slice's signals) and the
truth.  Each (structure, slice) of the union of both extents gets its 2D DSC against the truth; a
slice is *acceptable* when that DSC is at least ``good_dsc`` (0.8: "needs no edit" in the
ResAU-Net paper's grading is well above it), *bad* otherwise — including slices where the result
misses the structure the truth has there, which no slice flag can point at but which count against
recall.

Thresholds are quantiles of each signal over the acceptable slices: one quantile level ``q`` for
all signals, the lowest for which the share of acceptable slices flagged by any signal (the 0/1
rules included) stays within the false-alarm ``budget``.  A structure with at least
``min_samples`` acceptable slices gets its own thresholds, the others share the pooled ``*`` ones;
no threshold goes below its :data:`FLOORS` (a signal that is always 0 on good slices must not
flag the first pixel of noise).  :func:`measure` then gives precision and recall of the flags for
the bad slices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .config import ANY_STRUCTURE, DEFAULT_THRESHOLDS, RULE_SIGNALS, RULE_THRESHOLD
from .slice_flags import FLAG_SCORE, signal_score

GOOD_DSC = 0.8
DEFAULT_BUDGET = 0.05
MIN_SAMPLES = 50
QUANTILE_GRID = np.round(np.arange(0.80, 1.0001, 0.0025), 4)
FLOORS = {
    "centroid_jump_mm": 1.0,
    "area_change": float(np.log(1.25)),
    "overlap_loss": 0.05,
    "orphan_area_mm2": 5.0,
    "end_area_ratio": 0.5,
    "border_contact": 0.5,
    "uncertainty_inside": 0.05,
    "uncertainty_contour": 0.2,
    "flip_disagreement": 0.02,
}
FITTED = tuple(DEFAULT_THRESHOLDS)


@dataclasses.dataclass
class Sample:
    """One (structure, slice): its signals (None: the result does not have the structure there) and DSC."""

    case: str
    structure: str
    slice: int
    signals: dict[str, float] | None
    dsc: float

    def bad(self, good_dsc: float = GOOD_DSC) -> bool:
        return self.dsc < good_dsc


def slice_dsc(pred: np.ndarray, truth: np.ndarray, regions: Mapping[str, Sequence[int]]) -> dict[tuple[str, int], float]:
    """2D DSC per (structure, slice) over the union of the two extents; ``regions``: name → label values."""
    result = {}
    for name, values in regions.items():
        a, b = np.isin(pred, values), np.isin(truth, values)
        area_a, area_b = a.sum(axis=(1, 2)), b.sum(axis=(1, 2))
        overlap = (a & b).sum(axis=(1, 2))
        for k in np.flatnonzero((area_a + area_b) > 0).tolist():
            result[(name, int(k))] = float(2.0 * overlap[k] / (area_a[k] + area_b[k]))
    return result


def samples_of(case: str, report_slices: Iterable[Mapping[str, Any]], dsc: Mapping[tuple[str, int], float]
               ) -> list[Sample]:
    """Samples of one case from report.json's ``qa.slices`` and :func:`slice_dsc`."""
    samples = []
    seen = set()
    for entry in report_slices:
        key = (entry["structure"], int(entry["slice"]))
        seen.add(key)
        samples.append(Sample(case, key[0], key[1], dict(entry["signals"]), dsc.get(key, 1.0)))
    samples += [Sample(case, name, k, None, value) for (name, k), value in dsc.items() if (name, k) not in seen]
    return samples


def threshold_of(thresholds: Mapping[str, Mapping[str, float]], structure: str, signal: str) -> float:
    if signal in RULE_SIGNALS:
        return RULE_THRESHOLD
    for key in (structure, ANY_STRUCTURE):
        if signal in thresholds.get(key, {}):
            return float(thresholds[key][signal])
    return DEFAULT_THRESHOLDS[signal]


def flagged(sample: Sample, thresholds: Mapping[str, Mapping[str, float]]) -> bool:
    if sample.signals is None:
        return False
    return any(signal_score(value, threshold_of(thresholds, sample.structure, name)) >= FLAG_SCORE
               for name, value in sample.signals.items())


def _quantile_thresholds(good: Sequence[Sample], q: float, min_samples: int) -> dict[str, dict[str, float]]:
    pooled: dict[str, list[float]] = {}
    per_structure: dict[str, dict[str, list[float]]] = {}
    for sample in good:
        for name, value in (sample.signals or {}).items():
            if name in FITTED and np.isfinite(value):
                pooled.setdefault(name, []).append(value)
                per_structure.setdefault(sample.structure, {}).setdefault(name, []).append(value)

    def fit(values: list[float], name: str) -> float:
        # Just above the quantile: a slice flags when it is strictly beyond what good slices reach.
        return float(max(np.nextafter(np.quantile(values, q), np.inf), FLOORS[name]))

    thresholds = {ANY_STRUCTURE: {name: fit(values, name) for name, values in pooled.items()}}
    for structure, signals in per_structure.items():
        own = {name: fit(values, name) for name, values in signals.items() if len(values) >= min_samples}
        if own:
            thresholds[structure] = own
    return thresholds


def fit_thresholds(samples: Sequence[Sample], *, budget: float = DEFAULT_BUDGET, good_dsc: float = GOOD_DSC,
                   min_samples: int = MIN_SAMPLES) -> tuple[dict[str, dict[str, float]], float]:
    """(thresholds for the card's ``qa.slice_flags.thresholds``, the quantile level used)."""
    good = [s for s in samples if s.signals is not None and not s.bad(good_dsc)]
    if not good:
        raise ValueError("no acceptable slices to calibrate on")
    for q in QUANTILE_GRID:
        thresholds = _quantile_thresholds(good, float(q), min_samples)
        if np.mean([flagged(s, thresholds) for s in good]) <= budget:
            return _rounded(thresholds), float(q)
    return _rounded(_quantile_thresholds(good, 1.0, min_samples)), 1.0


def _rounded(thresholds: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    # Rounded up (4 significant digits), so rounding never lowers a threshold below what was fitted.
    def up(value: float) -> float:
        scale = 10 ** (3 - int(np.floor(np.log10(abs(value))))) if value else 1.0
        return float(np.ceil(value * scale) / scale)

    return {key: {name: up(value) for name, value in values.items()} for key, values in thresholds.items()}


def measure(samples: Sequence[Sample], thresholds: Mapping[str, Mapping[str, float]],
            good_dsc: float = GOOD_DSC) -> dict:
    """Precision and recall of the flags for bad slices (2D DSC < ``good_dsc``), and the false-alarm
    rate on acceptable slices the result has."""
    bad = [s for s in samples if s.bad(good_dsc)]
    good = [s for s in samples if not s.bad(good_dsc) and s.signals is not None]
    hits = sum(flagged(s, thresholds) for s in bad)
    false_alarms = sum(flagged(s, thresholds) for s in good)
    raised = hits + false_alarms
    return {"slices": len(samples), "bad_slices": len(bad), "bad_slices_not_drawn": sum(s.signals is None for s in bad),
            "flagged": raised, "flagged_bad": hits,
            "precision": round(hits / raised, 4) if raised else None,
            "recall": round(hits / len(bad), 4) if bad else None,
            "false_alarm_rate": round(false_alarms / len(good), 4) if good else None,
            "good_dsc": good_dsc}
