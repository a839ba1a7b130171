"""The ``qa`` section of a model card: thresholds, plausibility ranges and the selective-TTA gate.

Layout (``model.json`` → ``"qa"``; every part optional, defaults below)::

    {
      "format_version": 1,
      "slice_flags": {
        "thresholds": {"*": {"centroid_jump_mm": 5.0, ...}, "CTVn": {"centroid_jump_mm": 7.5}},
        "calibration": {...what qa-calibrate measured...}
      },
      "plausibility": {                       # learned from training label maps (qa.plausibility)
        "source": "...", "cases": 150,
        "structures": {"Bladder": {"volume_ml": {"min", "max", "p05", "p50", "p95", "n"}, ...}},
        "pairs": {"CTVn|Bladder": {"dx_mm": {...}, "dy_mm": {...}, "dz_mm": {...}}},
        "input": {"scan_extent_mm": {...}, ...},
        "tolerance": {...}                    # optional: overrides DEFAULT_TOLERANCE
      },
      "selective_tta": {"uncertain_below_margin": 0.5, "min_uncertain_fraction": 0.004,
                        "max_mirrored_fraction": 0.2, "calibration": {...}},
      "min_tumour_ml": 0.1                    # MR runner (unrelated to QA, kept where it was)
    }

A threshold is the value from which a signal flags a slice (higher = more suspicious).  Signals
that are rules (a gap, the image edge) have the fixed threshold 0.5 on their 0/1 values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

QA_FORMAT_VERSION = 1
ANY_STRUCTURE = "*"

RULE_SIGNALS = ("gap", "pieces_change", "volume_end", "crop_border")
"""0/1 signals: a slice is flagged whenever they are 1."""
RULE_THRESHOLD = 0.5

DEFAULT_THRESHOLDS: dict[str, float] = {
    "centroid_jump_mm": 5.0,
    "area_change": math.log(2.5),
    "overlap_loss": 0.5,
    "orphan_area_mm2": 20.0,
    "end_area_ratio": 1.1,
    "border_contact": 0.95,
    "uncertainty_inside": 0.4,
    "uncertainty_contour": 0.75,
    "flip_disagreement": 0.3,
}
"""Thresholds of an uncalibrated card: conservative, hand-set values (``qa-calibrate`` fits better ones).
``area_change`` is a natural log: ln 2.5 = the old rule's "2.5x area jump"."""


@dataclasses.dataclass(frozen=True)
class SelectiveFlip:
    """When a slice (CT) or window (MR) also gets the mirrored pass.

    An item is mirrored when more than ``min_uncertain_fraction`` of its pixels have a top-2 softmax
    margin below ``uncertain_below_margin`` in the plain pass; at most ``max_mirrored_fraction`` of
    all items are (the most uncertain ones), so a wholly unfamiliar image cannot cost a full second
    pass.  ``None`` of this (a card without ``selective_tta``) mirrors every item.
    """

    uncertain_below_margin: float = 0.5
    min_uncertain_fraction: float = 0.004
    max_mirrored_fraction: float | None = 0.2

    @classmethod
    def from_json(cls, document: Mapping[str, Any] | None) -> "SelectiveFlip | None":
        if not document:
            return None
        cap = document.get("max_mirrored_fraction", cls.max_mirrored_fraction)
        return cls(uncertain_below_margin=float(document.get("uncertain_below_margin", cls.uncertain_below_margin)),
                   min_uncertain_fraction=float(document.get("min_uncertain_fraction", cls.min_uncertain_fraction)),
                   max_mirrored_fraction=None if cap is None else float(cap))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class QAConfig:
    """The parsed ``qa`` section (see the module docstring)."""

    thresholds: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    plausibility: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    selective_flip: SelectiveFlip | None = None
    calibrated: bool = False
    stale: bool = False
    """The thresholds were calibrated for other weights (the network was retrained since)."""

    @classmethod
    def from_card(cls, card: Any) -> "QAConfig":
        """From a :class:`~CervixAutoSegLib.models.ModelCard` (or anything with a ``qa`` dict)."""
        config = cls.from_json(getattr(card, "qa", None) or {})
        calibration = ((getattr(card, "qa", None) or {}).get("slice_flags") or {}).get("calibration") or {}
        made_for = calibration.get("weights_sha256")
        if made_for is not None and hasattr(card, "networks"):
            current = {entry.role: entry.sha256 for entry in card.networks}
            config = dataclasses.replace(config, stale=dict(made_for) != current)
        return config

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> "QAConfig":
        flags = document.get("slice_flags") or {}
        thresholds = {str(name): {str(k): float(v) for k, v in values.items()}
                      for name, values in (flags.get("thresholds") or {}).items()}
        return cls(thresholds=thresholds, plausibility=dict(document.get("plausibility") or {}),
                   selective_flip=SelectiveFlip.from_json(document.get("selective_tta")),
                   calibrated=bool(flags.get("calibration")))

    def threshold(self, structure: str, signal: str) -> float:
        """The structure's own threshold, else the card's ``*`` one, else the default."""
        if signal in RULE_SIGNALS:
            return RULE_THRESHOLD
        for key in (structure, ANY_STRUCTURE):
            value = self.thresholds.get(key, {}).get(signal)
            if value is not None:
                return float(value)
        return DEFAULT_THRESHOLDS[signal]


def merged_qa(earlier: Mapping[str, Any] | None, **sections: Any) -> dict:
    """``earlier`` qa section with ``sections`` replaced (None values keep the earlier part)."""
    merged = dict(earlier or {})
    merged["format_version"] = QA_FORMAT_VERSION
    for key, value in sections.items():
        if value is not None:
            merged[key] = value
    return merged
