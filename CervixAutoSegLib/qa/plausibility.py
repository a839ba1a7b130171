"""Is the result as a whole plausible?  Ranges learned from training label maps, and the verdicts.

:func:`learn_ranges` describes every training case (image + truth, :func:`.case_features.case_features`)
and keeps, per feature, the range the training data spans (``min``, ``max``, and ``p05``/``p50``/``p95``
for the record).  The ranges go into the model card's ``qa.plausibility`` (training export writes them;
a clinic that retrains gets its own).  :func:`judge_case` measures a result the same way and gives each
structure, the input and the case a verdict:

* ``plausible`` — every feature within the training range, widened by :data:`SPREAD_MARGIN` of the
  training cases' own 5-95 % spread (the extremes of a few dozen cases are not the extremes of the
  population: a new case falls outside [min, max] of n cases with probability 2/(n+1) per feature,
  far too often for twenty features; the margin takes a normal feature to about ±2.8 SD for 22
  cases, ±3.4 SD for 136) and by the measuring :data:`RESOLUTION`;
* ``check`` — some feature outside that, but within the tolerance beyond it (:data:`DEFAULT_TOLERANCE`:
  volumes within a factor, lengths and positions within some mm, piece counts within a few);
* ``implausible`` — some feature beyond the tolerance, a structure every training case had is
  missing, or the scan is too short to hold the anatomy the training cases needed.

Each verdict other than ``plausible`` comes with one human-readable reason per finding.  The case's
verdict is the worst of its structures' and the input's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .case_features import INPUT_FEATURES, PAIR_FEATURES, PAIR_SEPARATOR, STRUCTURE_FEATURES, case_features

PLAUSIBLE, CHECK, IMPLAUSIBLE = "plausible", "check", "implausible"
VERDICTS = (PLAUSIBLE, CHECK, IMPLAUSIBLE)
"""In order of severity."""

DEFAULT_TOLERANCE: dict[str, tuple[str, float]] = {
    "volume_ml": ("factor", 1.5),
    "extent_mm": ("mm", 30.0),
    "pieces": ("count", 2.0),
    "body_lr": ("plus", 0.25),
    "body_ap": ("plus", 0.25),
    "inside_body": ("plus", 0.1),
    "dx_mm": ("mm", 25.0),
    "dy_mm": ("mm", 25.0),
    "dz_mm": ("mm", 30.0),
    "scan_extent_mm": ("mm", 0.0),
    "body_width_mm": ("factor", 1.5),
    "body_depth_mm": ("factor", 1.5),
    "hu_p05": ("plus", 150.0),
    "hu_p50": ("plus", 100.0),
    "hu_p95": ("plus", 300.0),
    "contrast_low": ("factor", 2.0),
    "contrast_high": ("factor", 2.0),
}
"""How far beyond the training range a feature may go and still only call for a check:
("factor", f): [min/f, max·f]; ("mm" | "plus" | "count", d): [min − d, max + d]."""

SPREAD_MARGIN = 0.25
"""The plausible range reaches this share of the training p05-p95 spread beyond the training extremes
(on the log scale for factor-type features)."""

RESOLUTION: dict[str, float] = {
    "volume_ml": 0.05, "body_width_mm": 0.05, "body_depth_mm": 0.05, "contrast_low": 0.05, "contrast_high": 0.05,
    "extent_mm": 2.0, "dx_mm": 2.0, "dy_mm": 2.0, "dz_mm": 2.0, "scan_extent_mm": 2.0,
    "body_lr": 0.02, "body_ap": 0.02, "inside_body": 0.01, "pieces": 0.0,
    "hu_p05": 5.0, "hu_p50": 5.0, "hu_p95": 5.0,
}
"""Differences smaller than this are measurement noise, not a finding: the training range is widened
by it (relative for factor-type features, absolute for the others) before anything is called for a check."""

FEATURE_TEXT = {
    "volume_ml": ("volume", "{:.1f} ml"),
    "extent_mm": ("cranio-caudal extent", "{:.0f} mm"),
    "pieces": ("number of separate pieces", "{:.0f}"),
    "body_lr": ("left-right position in the body", "{:+.2f}"),
    "body_ap": ("front-back position in the body", "{:+.2f}"),
    "inside_body": ("share inside the body", "{:.0%}"),
    "dx_mm": ("left-right offset", "{:+.0f} mm"),
    "dy_mm": ("front-back offset", "{:+.0f} mm"),
    "dz_mm": ("cranio-caudal offset", "{:+.0f} mm"),
    "scan_extent_mm": ("scan length", "{:.0f} mm"),
    "body_width_mm": ("body width", "{:.0f} mm"),
    "body_depth_mm": ("body depth", "{:.0f} mm"),
    "hu_p05": ("5th HU percentile in the body", "{:.0f} HU"),
    "hu_p50": ("median HU in the body", "{:.0f} HU"),
    "hu_p95": ("95th HU percentile in the body", "{:.0f} HU"),
    "contrast_low": ("dark-to-median intensity ratio", "{:.2f}"),
    "contrast_high": ("bright-to-median intensity ratio", "{:.2f}"),
}
JUDGED_INPUT = tuple(f for f in INPUT_FEATURES if f not in ("scan_extent_mm", "structures_extent_mm"))
"""Input features judged against their own range (the scan length is judged against the anatomy)."""
PERCENTILES = (5, 50, 95)


def worst(verdicts: Iterable[str]) -> str:
    return max(verdicts, key=VERDICTS.index, default=PLAUSIBLE)


# ---------------------------------------------------------------- learning
def summarise(values: Sequence[float]) -> dict:
    """{"n", "min", "max", "p05", "p50", "p95"} of ``values`` (rounded for the card)."""
    array = np.asarray(values, dtype=float)
    p05, p50, p95 = np.percentile(array, PERCENTILES)
    return {"n": int(array.size), "min": _round(array.min()), "max": _round(array.max()),
            "p05": _round(p05), "p50": _round(p50), "p95": _round(p95)}


def _round(value: float) -> float:
    return float(f"{float(value):.5g}")


def ranges_from_features(features: Sequence[Mapping[str, Any]], structure_names: Sequence[str],
                         source: str = "") -> dict:
    """The card's ``qa.plausibility`` from the :func:`case_features` of training cases."""
    structures = {}
    for name in structure_names:
        present = [case["structures"][name] for case in features if name in case["structures"]]
        entry = {key: summarise([p[key] for p in present]) for key in STRUCTURE_FEATURES if present}
        entry["present_in"] = len(present)
        structures[name] = entry
    pairs = {}
    for key in sorted({pair for case in features for pair in case["pairs"]}):
        found = [case["pairs"][key] for case in features if key in case["pairs"]]
        pairs[key] = {f: summarise([p[f] for p in found]) for f in PAIR_FEATURES}
    inputs = {}
    for key in INPUT_FEATURES:
        found = [case["input"][key] for case in features if key in case["input"]]
        if found:
            inputs[key] = summarise(found)
    return {"source": source, "cases": len(features), "structures": structures, "pairs": pairs, "input": inputs}


def learn_ranges(cases: Iterable[tuple[Any, np.ndarray]], structures: Sequence[Any], source: str = "") -> dict:
    """:func:`ranges_from_features` of ``(image Volume, truth labels (z, y, x))`` pairs."""
    return ranges_from_features([case_features(image, labels, structures) for image, labels in cases],
                                [s.name for s in structures], source)


# ---------------------------------------------------------------- judging
def plausible_band(name: str, learned: Mapping[str, float], tolerance: Mapping[str, Any]) -> tuple[float, float]:
    """The range within which ``name`` is plausible: the training extremes widened by the spread margin
    and the resolution (see the module docstring)."""
    kind = tolerance.get(name, DEFAULT_TOLERANCE.get(name, ("plus", 0.0)))[0]
    low, high = float(learned["min"]), float(learned["max"])
    p05, p95 = float(learned.get("p05", low)), float(learned.get("p95", high))
    noise = RESOLUTION.get(name, 0.0)
    if kind == "factor" and low > 0 and p05 > 0:
        widen = np.exp(SPREAD_MARGIN * np.log(p95 / p05)) * (1.0 + noise)
        return low / widen, high * widen
    margin = SPREAD_MARGIN * (p95 - p05) + noise
    return low - margin, high + margin


def _limits(name: str, band: tuple[float, float], tolerance: Mapping[str, Any]) -> tuple[float, float]:
    """Beyond these the feature is implausible: the plausible band widened by the tolerance."""
    kind, amount = tolerance.get(name, DEFAULT_TOLERANCE.get(name, ("plus", 0.0)))
    low, high = band
    if kind == "factor":
        return low / float(amount), high * float(amount)
    return low - float(amount), high + float(amount)


def judge_value(name: str, value: float, learned: Mapping[str, float] | None, tolerance: Mapping[str, Any],
                subject: str) -> tuple[str, str | None]:
    """(verdict, reason or None) of one feature against its learned range."""
    if learned is None or not math.isfinite(value):
        return PLAUSIBLE, None
    band = plausible_band(name, learned, tolerance)
    if band[0] <= value <= band[1]:
        return PLAUSIBLE, None
    far_low, far_high = _limits(name, band, tolerance)
    verdict = CHECK if far_low <= value <= far_high else IMPLAUSIBLE
    what, style = FEATURE_TEXT.get(name, (name, "{:g}"))
    side = "above" if value > band[1] else "below"
    degree = "far " if verdict == IMPLAUSIBLE else ""
    low, high = float(learned["min"]), float(learned["max"])
    return verdict, (f"{subject} {what} {style.format(value)} is {degree}{side} the training range "
                     f"{style.format(low)} to {style.format(high)}")


def judge_structures(features: Mapping[str, Any], ranges: Mapping[str, Any], names: Sequence[str],
                     tolerance: Mapping[str, Any]) -> dict[str, dict]:
    """Verdict and reasons per structure (``names``, card order), pair offsets included."""
    result = {}
    learned_cases = int(ranges.get("cases", 0))
    for name in names:
        learned = (ranges.get("structures") or {}).get(name)
        found = features["structures"].get(name)
        findings: list[tuple[str, str]] = []
        if found is None:
            if learned and learned.get("present_in", 0) == learned_cases and learned_cases:
                findings.append((IMPLAUSIBLE, f"{name} was not found, but every one of the {learned_cases} "
                                              "training cases has it"))
        elif learned:
            for key in STRUCTURE_FEATURES:
                findings.append(judge_value(key, found[key], learned.get(key), tolerance, name))
        result[name] = _verdict(findings, found)
    for key, offsets in features["pairs"].items():
        first, second = key.split(PAIR_SEPARATOR)
        learned = (ranges.get("pairs") or {}).get(key, {})
        for feature in PAIR_FEATURES:
            verdict, reason = judge_value(feature, offsets[feature], learned.get(feature), tolerance,
                                          f"{first} relative to {second}:")
            if reason:
                entry = result[first]
                entry["reasons"].append(reason)
                entry["verdict"] = worst((entry["verdict"], verdict))
    return result


def _verdict(findings: Sequence[tuple[str, str | None]], found: Mapping[str, Any] | None) -> dict:
    entry = {"verdict": worst(v for v, _ in findings), "reasons": [r for v, r in findings if r]}
    if found is not None:
        entry["features"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in found.items()}
    return entry


def judge_input(features: Mapping[str, Any], ranges: Mapping[str, Any], tolerance: Mapping[str, Any]) -> dict:
    """Does the image look like the training images, and is the scan long enough for the anatomy?"""
    learned = ranges.get("input") or {}
    values = features["input"]
    findings = [judge_value(key, values[key], learned.get(key), tolerance, "image") for key in JUDGED_INPUT
                if key in values]
    needed = learned.get("structures_extent_mm")
    if needed and values.get("scan_extent_mm") is not None:
        shortest = float(needed["min"])
        scan = float(values["scan_extent_mm"])
        if scan < shortest:
            findings.append((IMPLAUSIBLE, f"the scan covers {scan:.0f} mm cranio-caudally, less than the "
                                          f"{shortest:.0f} mm the contoured anatomy spans in every training case: "
                                          "it cannot hold the whole pelvis"))
    entry = _verdict(findings, None)
    entry["features"] = {k: round(float(v), 3) for k, v in values.items()}
    return entry


def judge_case(image: Any, labels: np.ndarray, structures: Sequence[Any], plausibility: Mapping[str, Any],
               boxes: Sequence[tuple | None] | None = None) -> dict:
    """``{"verdict", "reasons", "structures": {name: {"verdict", "reasons", "features"}}, "input": {...}}``.

    Without learned ranges (a card that has none) every verdict is ``plausible`` and ``learned`` is False.
    """
    features = case_features(image, labels, structures, boxes)
    tolerance = {**{k: tuple(v) for k, v in DEFAULT_TOLERANCE.items()},
                 **{k: tuple(v) for k, v in (plausibility.get("tolerance") or {}).items()}}
    names = [s.name for s in structures]
    per_structure = judge_structures(features, plausibility, names, tolerance)
    inputs = judge_input(features, plausibility, tolerance)
    reasons = [r for name in names for r in per_structure[name]["reasons"]] + inputs["reasons"]
    return {"verdict": worst([inputs["verdict"], *(e["verdict"] for e in per_structure.values())]),
            "learned": bool(plausibility.get("structures")), "source": plausibility.get("source", ""),
            "reasons": reasons, "structures": per_structure, "input": inputs}
