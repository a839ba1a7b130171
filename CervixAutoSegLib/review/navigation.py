"""Which slices a reviewer visits, in which order, and where "next ungraded" goes.

Slices are the image's own (array axis 0, its acquisition plane).  A structure is reviewed on
the slices where its contour exists plus one slice beyond each end of every run of them: that is
where a contour appears or disappears too early or too late, the paper's most frequent reason for
"unacceptable".  Slices QA flagged for the structure are always included.  Empty slices elsewhere
are skipped.

Orders: *natural* (structure by structure, slices ascending) or *flagged first* (flagged stops by
descending score, then report order, then the rest in natural order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

from .flags import SliceFlag
from .model import ReviewItem

NATURAL, FLAGGED_FIRST = "natural", "flagged_first"
ORDERS = (NATURAL, FLAGGED_FIRST)


@dataclasses.dataclass(frozen=True, order=True)
class Stop:
    """One (item, slice) the reviewer grades."""

    item: str
    slice_index: int


def review_slices(present: Iterable[int], n_slices: int, extra: Iterable[int] = ()) -> list[int]:
    """Slices to visit: ``present`` plus one beyond each end of each consecutive run, plus ``extra``.

    Everything is clipped to ``0 .. n_slices - 1``; the result is sorted and unique.
    """
    present = sorted(set(present))
    chosen = set(present)
    for index, k in enumerate(present):
        if index == 0 or present[index - 1] != k - 1:
            chosen.add(k - 1)  # start of a run: the slice before it
        if index == len(present) - 1 or present[index + 1] != k + 1:
            chosen.add(k + 1)  # end of a run: the slice after it
    chosen.update(extra)
    return sorted(k for k in chosen if 0 <= k < n_slices)


def flags_by_item(items: Sequence[ReviewItem], flags: Iterable[SliceFlag]) -> dict[Stop, SliceFlag]:
    """Flags attached to the items whose ``flag_structure`` they name (blinded items have none)."""
    by_structure: dict[str, list[ReviewItem]] = {}
    for item in items:
        if item.flag_structure:
            by_structure.setdefault(item.flag_structure, []).append(item)
    return {Stop(item.id, flag.slice_index): flag for flag in flags for item in by_structure.get(flag.structure, ())}


def item_stops(items: Sequence[ReviewItem], n_slices: int, flags: Mapping[Stop, SliceFlag]) -> list[Stop]:
    """Every stop of every item in natural order (items as given, slices ascending)."""
    stops = []
    for item in items:
        flagged = [stop.slice_index for stop in flags if stop.item == item.id]
        stops.extend(Stop(item.id, k) for k in review_slices(item.slices, n_slices, flagged))
    return stops


def ordered_stops(stops: Sequence[Stop], flags: Mapping[Stop, SliceFlag], order: str = NATURAL) -> list[Stop]:
    """``stops`` in the ``order`` asked (see the module docstring)."""
    if order == NATURAL:
        return list(stops)
    if order != FLAGGED_FIRST:
        raise ValueError(f"unknown order {order!r}; use one of {ORDERS}")
    position = {stop: index for index, stop in enumerate(stops)}
    flagged = sorted((stop for stop in stops if stop in flags),
                     key=lambda stop: (-(flags[stop].score if flags[stop].score is not None else -1.0),
                                       position[stop]))
    chosen = set(flagged)
    return flagged + [stop for stop in stops if stop not in chosen]


class Navigator:
    """A cursor over ordered stops; ``is_graded`` tells which stops already have a grade.

    Moving never changes grades.  "Next ungraded" searches forward from the cursor and wraps
    around, so after an undo (which puts the cursor on the slice whose grade was removed) it
    returns that very slice.
    """

    def __init__(self, stops: Sequence[Stop], is_graded: Callable[[Stop], bool]):
        self._stops = list(stops)
        self._index = {stop: position for position, stop in enumerate(self._stops)}
        self._is_graded = is_graded
        self.position = 0

    @property
    def stops(self) -> list[Stop]:
        return list(self._stops)

    @property
    def current(self) -> Stop | None:
        return self._stops[self.position] if self._stops else None

    def __len__(self) -> int:
        return len(self._stops)

    def __contains__(self, stop: object) -> bool:
        return stop in self._index

    def go_to(self, stop: Stop) -> Stop:
        """Put the cursor on ``stop`` (ValueError when it is not a stop)."""
        if stop not in self._index:
            raise ValueError(f"{stop} is not on the review path")
        self.position = self._index[stop]
        return stop

    def step(self, offset: int) -> Stop | None:
        """Move by ``offset`` stops, clamped to the first and last."""
        if self._stops:
            self.position = min(max(self.position + offset, 0), len(self._stops) - 1)
        return self.current

    def next_ungraded(self, include_current: bool = True) -> Stop | None:
        """The first ungraded stop from the cursor on (wrapping); None when all are graded."""
        count = len(self._stops)
        start = 0 if include_current else 1
        for offset in range(start, count + start):
            position = (self.position + offset) % count
            if not self._is_graded(self._stops[position]):
                self.position = position
                return self._stops[position]
        return None

    def reorder(self, stops: Sequence[Stop]) -> None:
        """Replace the path (a new order) keeping the cursor on the same stop when it is still there."""
        current = self.current
        self._stops = list(stops)
        self._index = {stop: position for position, stop in enumerate(self._stops)}
        self.position = self._index.get(current, 0) if current is not None else 0

    def graded_count(self) -> int:
        return sum(1 for stop in self._stops if self._is_graded(stop))
