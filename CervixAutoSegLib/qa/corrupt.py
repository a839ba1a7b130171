"""Deliberate, one-slice corruptions of a label map, to measure what the slice flags catch.

The five ways a slice-by-slice contour typically goes wrong (the ResAU-Net paper's unacceptable
slices are mostly where an organ appears or disappears):

* ``erase`` — a slice inside the structure's extent loses it;
* ``shift`` — one slice of the structure moved by :data:`SHIFT_MM` in-plane;

(``shift``, ``island`` and ``extend`` paint onto background only, so only the structure itself changes;
``swap`` changes both structures.)
* ``island`` — a spurious disc (radius :data:`ISLAND_RADIUS_MM`) of the structure on one of its
  slices, away from everything drawn on that slice and its neighbours;
* ``extend`` — one extra slice beyond the structure's true end (a copy of its end slice);
* ``swap`` — the structure and its nearest neighbouring structure exchange labels on one slice.

:func:`corrupt` makes one corruption and says which (structure, slice) pairs it changed — a pair
is *corrupted* when the structure's region on that slice differs afterwards; every other pair of
the structure's extent is *untouched*.  :func:`flag_rates` runs the slice flags over many
corruptions and counts both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

KINDS = ("erase", "shift", "island", "extend", "swap")
SHIFT_MM = 10.0
ISLAND_RADIUS_MM = 6.0
ISLAND_CLEARANCE_MM = 25.0
"""An island is placed at least this far from anything drawn on its slice and the two beside it."""


@dataclasses.dataclass
class Corruption:
    kind: str
    structure: str
    slice: int
    changed: set[tuple[str, int]]
    """(structure, slice) pairs whose region differs from the original."""


def _regions(structures: Sequence[Any]) -> dict[str, tuple[int, ...]]:
    from ..postprocess import rules_for

    rules = {rule.value: rule for rule in rules_for(structures)}
    return {s.name: (s.value, *rules[s.value].includes) for s in structures}


def changed_pairs(before: np.ndarray, after: np.ndarray, structures: Sequence[Any]) -> set[tuple[str, int]]:
    """(structure, slice) pairs whose region differs between two label maps (z, y, x)."""
    slices = np.flatnonzero((before != after).any(axis=(1, 2)))
    pairs = set()
    for name, region in _regions(structures).items():
        for k in slices.tolist():
            if not np.array_equal(np.isin(before[k], region), np.isin(after[k], region)):
                pairs.add((name, int(k)))
    return pairs


def _extent(labels: np.ndarray, value: int) -> np.ndarray:
    return np.flatnonzero((labels == value).any(axis=(1, 2)))


def _interior(present: np.ndarray) -> np.ndarray:
    """Slices with the structure on both neighbours too."""
    inside = set(present.tolist())
    return np.array([k for k in present.tolist() if k - 1 in inside and k + 1 in inside], dtype=int)


def _erase(labels, structure, rng, spacing_xy, regions):
    candidates = _interior(_extent(labels, structure.value))
    if not candidates.size:
        return None
    k = int(rng.choice(candidates))
    plane = labels[k]
    plane[np.isin(plane, regions[structure.name])] = 0
    return k


def _shift(labels, structure, rng, spacing_xy, regions):
    candidates = _interior(_extent(labels, structure.value))
    if not candidates.size:
        return None
    k = int(rng.choice(candidates))
    angle = rng.uniform(0, 2 * np.pi)
    dy = int(round(SHIFT_MM * np.sin(angle) / spacing_xy[1]))
    dx = int(round(SHIFT_MM * np.cos(angle) / spacing_xy[0]))
    mask = labels[k] == structure.value
    moved = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    ys, xs = ys + dy, xs + dx
    keep = (ys >= 0) & (ys < mask.shape[0]) & (xs >= 0) & (xs < mask.shape[1])
    moved[ys[keep], xs[keep]] = True
    labels[k][mask] = 0
    labels[k][moved & (labels[k] == 0)] = structure.value  # onto background only: the other structures stay
    return k


def _island(labels, structure, rng, spacing_xy, regions):
    from scipy import ndimage

    present = _extent(labels, structure.value)
    if not present.size:
        return None
    k = int(rng.choice(present))
    near = (labels[max(k - 1, 0):k + 2] > 0).any(axis=0)
    clearance = ndimage.distance_transform_edt(~near, sampling=(spacing_xy[1], spacing_xy[0]))
    rows, columns = np.nonzero(clearance >= ISLAND_CLEARANCE_MM)
    margin = int(np.ceil(ISLAND_RADIUS_MM / min(spacing_xy)))
    keep = ((rows >= margin) & (rows < labels.shape[1] - margin) & (columns >= margin)
            & (columns < labels.shape[2] - margin))
    if not keep.any():
        return None
    pick = rng.integers(np.count_nonzero(keep))
    y, x = rows[keep][pick], columns[keep][pick]
    yy, xx = np.ogrid[:labels.shape[1], :labels.shape[2]]
    disc = ((yy - y) * spacing_xy[1]) ** 2 + ((xx - x) * spacing_xy[0]) ** 2 <= ISLAND_RADIUS_MM ** 2
    labels[k][disc & (labels[k] == 0)] = structure.value
    return k


def _extend(labels, structure, rng, spacing_xy, regions):
    present = _extent(labels, structure.value)
    ends = [(int(present[-1]), 1), (int(present[0]), -1)] if present.size else []
    ends = [(k, step) for k, step in ends if 0 <= k + step < labels.shape[0]]
    if not ends:
        return None
    k, step = ends[int(rng.integers(len(ends)))]
    target = labels[k + step]
    target[(labels[k] == structure.value) & (target == 0)] = structure.value
    return k + step


def _swap(labels, structure, rng, spacing_xy, regions):
    present = _extent(labels, structure.value)
    others = [v for v in np.unique(labels[present]) if v not in (0, structure.value)] if present.size else []
    rng.shuffle(present)
    for k in present.tolist():
        here = [v for v in others if (labels[k] == v).any()]
        if not here:
            continue
        centre = np.argwhere(labels[k] == structure.value).mean(axis=0)
        other = min(here, key=lambda v: np.linalg.norm(np.argwhere(labels[k] == v).mean(axis=0) - centre))
        mine, theirs = labels[k] == structure.value, labels[k] == other
        labels[k][mine], labels[k][theirs] = other, structure.value
        return int(k)
    return None


_MAKERS = {"erase": _erase, "shift": _shift, "island": _island, "extend": _extend, "swap": _swap}


def corrupt(labels: np.ndarray, structures: Sequence[Any], kind: str, structure: Any, rng: np.random.Generator,
            spacing_xy: Sequence[float]) -> tuple[np.ndarray, Corruption] | None:
    """A copy of ``labels`` (z, y, x) with one corruption of ``kind`` of ``structure``; None when it
    cannot be made (e.g. no interior slice to erase) or changes nothing."""
    corrupted = np.array(labels, copy=True)
    k = _MAKERS[kind](corrupted, structure, rng, spacing_xy, _regions(structures))
    if k is None:
        return None
    changed = changed_pairs(labels, corrupted, structures)
    if not changed:
        return None
    return corrupted, Corruption(kind, structure.name, int(k), changed)


@dataclasses.dataclass
class FlagRates:
    """Counts over many corruptions: corrupted (structure, slice) pairs flagged, untouched ones flagged."""

    corrupted: int = 0
    corrupted_flagged: int = 0
    untouched: int = 0
    untouched_flagged: int = 0
    by_kind: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    missed: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.corrupted_flagged / max(self.corrupted, 1)

    @property
    def false_alarm_rate(self) -> float:
        return self.untouched_flagged / max(self.untouched, 1)

    def add(self, corruption: Corruption, flagged: set[tuple[str, int]], assessed: set[tuple[str, int]]) -> None:
        hits = len(corruption.changed & flagged)
        self.corrupted += len(corruption.changed)
        self.corrupted_flagged += hits
        counts = self.by_kind.setdefault(corruption.kind, [0, 0])
        counts[0] += len(corruption.changed)
        counts[1] += hits
        self.missed += [(corruption.kind, name, k) for name, k in sorted(corruption.changed - flagged)]
        untouched = assessed - corruption.changed
        self.untouched += len(untouched)
        self.untouched_flagged += len(untouched & flagged)


def flag_rates(labels: Any, structures: Sequence[Any], config: Any, rng: np.random.Generator, *,
               evidence: Sequence[Any] | None = None, kinds: Sequence[str] = KINDS,
               rates: FlagRates | None = None) -> FlagRates:
    """Every kind of corruption of every structure of ``labels`` (a label Volume), one at a time, each
    judged by the slice flags (with the network's ``evidence`` of the uncorrupted run, if any)."""
    from .slice_flags import assess_slices

    rates = rates or FlagRates()
    array = np.asarray(labels.array)
    spacing_xy = (float(labels.spacing[0]), float(labels.spacing[1]))
    for structure in structures:
        for kind in kinds:
            made = corrupt(array, structures, kind, structure, rng, spacing_xy)
            if made is None:
                continue
            corrupted, corruption = made
            _, slices = assess_slices(labels.with_array(corrupted), structures, config, evidence=evidence)
            rates.add(corruption, {(e.structure, e.slice) for e in slices if e.flagged},
                      {(e.structure, e.slice) for e in slices})
    return rates
