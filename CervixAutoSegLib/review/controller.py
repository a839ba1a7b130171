"""What the Review panel shows and does, without Qt: the Slicer widget only mirrors :class:`ReviewView`.

The widget calls :meth:`ReviewController.open` with a review folder and the reviewer's name, the
``set_*`` methods when the user changes a selector, :meth:`~ReviewController.key` for every hotkey
and the button methods; after each call it copies :attr:`ReviewController.view` into its widgets.
Decisions — which slice is next, what a hotkey means while review mode is off, what the status
line says, which segment is flagged — are made here and tested headless.

Scene effects go through a :class:`ReviewScene` (normally
:class:`~CervixAutoSegLib.review.mrml_review.MrmlReviewScene`): jump the slice views, set a
segment's status, show the flagged-slice and summary tables.  Without one (``None``) the
controller still works, e.g. for scripted grading and the benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import CervixAutoSegError, InputError
from .flags import SliceFlag
from .grades import HOTKEYS, Grade
from .model import ReviewItem
from .navigation import FLAGGED_FIRST, NATURAL, Navigator, Stop, flags_by_item, item_stops, ordered_stops
from .session import ReviewSession
from .summary import Table2, table2

log = logging.getLogger(__name__)

ALL_ITEMS = ""
"""Structure selector value: every structure of the review."""
NEXT_KEYS, PREVIOUS_KEYS, NEXT_UNGRADED_KEYS, UNDO_KEYS = ("Right", "Down"), ("Left", "Up"), ("Space",), ("Ctrl+Z",)
NAVIGATION_KEYS = (*NEXT_KEYS, *PREVIOUS_KEYS, *NEXT_UNGRADED_KEYS, *UNDO_KEYS)
HOTKEY_NAMES = (*HOTKEYS, *NAVIGATION_KEYS)
"""Every key the panel binds (while review mode is on)."""
NOT_STARTED, IN_PROGRESS, COMPLETED, FLAGGED = "notstarted", "inprogress", "completed", "flagged"
"""Segment statuses, Slicer's machine-readable spelling (vtkSlicerSegmentationsModuleLogic)."""


class ReviewScene(Protocol):
    """What the controller asks of the scene (MRML in Slicer; nothing in a script)."""

    def show_slice(self, item: ReviewItem, slice_index: int, position_lps: np.ndarray) -> None: ...

    def set_segment_status(self, item: ReviewItem, status: str) -> None: ...

    def show_flags(self, rows: Sequence[FlagRow]) -> None: ...

    def show_summary(self, table: Table2) -> None: ...


@dataclasses.dataclass(frozen=True)
class Choice:
    value: str
    label: str


@dataclasses.dataclass(frozen=True)
class FlagRow:
    """One row of the flagged-slices table."""

    item: str
    label: str
    slice_index: int
    z_mm: float | None
    score: float | None
    reason: str


@dataclasses.dataclass
class ReviewView:
    """Everything the Review panel shows; the widget copies it into its Qt widgets."""

    is_open: bool = False
    title: str = "No review open"
    items: list[Choice] = dataclasses.field(default_factory=list)
    item: str = ALL_ITEMS
    flagged_first: bool = False
    review_mode: bool = False
    slice_text: str = ""
    grade_text: str = ""
    comment: str = ""
    flag_text: str = ""
    grade_enabled: bool = False
    navigation_enabled: bool = False
    undo_enabled: bool = False
    progress: int = 0
    progress_maximum: int = 1
    progress_text: str = ""
    status: str = "Open a review folder (made by 'cervixautoseg review start') and enter your name."
    flag_rows: list[FlagRow] = dataclasses.field(default_factory=list)

    @property
    def hotkeys_active(self) -> bool:
        """Hotkeys are bound only in review mode: Segment Editor uses the number keys too."""
        return self.is_open and self.review_mode


class ReviewController:
    """One reviewer's review in the panel (see the module docstring)."""

    def __init__(self, scene: ReviewScene | None = None, *, auto_advance: bool = True):
        self.scene = scene
        self.auto_advance = auto_advance
        self.session: ReviewSession | None = None
        self.view = ReviewView()
        self._navigator: Navigator | None = None
        self._flags: dict[Stop, SliceFlag] = {}
        self._stops: list[Stop] = []
        self._items: dict[str, ReviewItem] = {}
        self._item_stops: dict[str, list[Stop]] = {}
        self._flag_rows: list[FlagRow] = []

    # -------------------------------------------------------------- open / close
    def open(self, folder: str | Path, reviewer: str) -> ReviewView:
        """Open ``folder`` as ``reviewer`` and go where they stopped (the next ungraded slice).

        ``folder`` may also be a cohort (a folder of review folders): the reviewer's next case opens
        (:func:`~CervixAutoSegLib.review.worklist.resolve`; blinded cases in a random order).
        """
        from .worklist import resolve

        self.close()
        if not str(reviewer).strip():
            return self._status("Enter your name as reviewer first: grades are kept per reviewer.")
        try:
            self.session = ReviewSession(resolve(folder, reviewer), reviewer)
        except CervixAutoSegError as error:
            return self._status(str(error))
        manifest = self.session.manifest
        self._items = {item.id: item for item in manifest.items}
        self._flags = flags_by_item(manifest.items, (SliceFlag.from_json(f) for f in manifest.flags))
        self._stops = item_stops(manifest.items, manifest.geometry.n_slices, self._flags)
        self._item_stops = {item.id: [s for s in self._stops if s.item == item.id] for item in manifest.items}
        self._flag_rows = self._sorted_flag_rows()
        self._navigator = Navigator(self._stops, self.session.is_graded)
        self.view = ReviewView(is_open=True, items=[Choice(ALL_ITEMS, "All structures")] +
                               [Choice(item.id, item.label) for item in manifest.items])
        self.view.title = (f"Case {manifest.case_id} - {self.session.reviewer}"
                           + (" - blinded (sources hidden)" if manifest.blinded else ""))
        self._resume()
        for item in manifest.items:
            self._update_status(item.id)
        if self.scene is not None:
            self.scene.show_flags(self.flag_rows())
        warnings = " ".join(self.session.warnings)
        return self._render(warnings or "Review open. Turn on review mode to grade with the keys 1-4, 0/N.")

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session, self._navigator = None, None
        self.view = ReviewView()

    def _resume(self) -> None:
        last = self.session.last_stop if self.session else None
        if last is not None and last in self._navigator:
            self._navigator.go_to(last)
        self._navigator.next_ungraded()

    # -------------------------------------------------------------- options
    def set_item(self, item_id: str) -> ReviewView:
        """Review one structure ('' = all); the path is rebuilt, the cursor kept when possible."""
        if not self._ready():
            return self.view
        if item_id != ALL_ITEMS and item_id not in self._items:
            return self._status(f"No structure {item_id!r} in this review.")
        self.view.item = item_id
        self._reorder()
        return self._render()

    def set_flagged_first(self, flagged_first: bool) -> ReviewView:
        self.view.flagged_first = bool(flagged_first)
        if self._ready():
            self._reorder()
            if flagged_first and not self._flags:
                return self._render("This review has no QA flags (no report.json, or a blinded review).")
        return self._render()

    def set_review_mode(self, on: bool) -> ReviewView:
        self.view.review_mode = bool(on) and self.view.is_open
        return self._render("Review mode on: 1-4 grade, 0/N not assessable, arrows move, Space next ungraded, "
                            "Ctrl+Z undo." if self.view.review_mode else "Review mode off: the keys are free "
                            "for Segment Editor again.")

    def _reorder(self) -> None:
        stops = [s for s in self._stops if self.view.item in (ALL_ITEMS, s.item)]
        self._navigator.reorder(ordered_stops(stops, self._flags, FLAGGED_FIRST if self.view.flagged_first
                                              else NATURAL))
        if self.view.flagged_first and self._navigator.current is not None:
            self._navigator.position = 0  # the worst flagged slice not graded yet comes first
            self._navigator.next_ungraded()

    # -------------------------------------------------------------- keys and buttons
    def key(self, name: str) -> ReviewView:
        """A hotkey: ignored (returns the view unchanged) unless review mode is on."""
        if not self.view.hotkeys_active:
            return self.view
        if name.upper() in HOTKEYS:
            return self.grade(HOTKEYS[name.upper()])
        actions = {**dict.fromkeys(NEXT_KEYS, self.next), **dict.fromkeys(PREVIOUS_KEYS, self.previous),
                   **dict.fromkeys(NEXT_UNGRADED_KEYS, self.next_ungraded), **dict.fromkeys(UNDO_KEYS, self.undo)}
        action = actions.get(name)
        return action() if action else self.view

    def grade(self, grade: Grade | str, comment: str | None = None) -> ReviewView:
        """Grade the current slice (saved before this returns), then go to the next ungraded one."""
        stop = self._navigator.current if self._ready() else None
        if stop is None:
            return self._status("Nothing to grade here.")
        comment = self.view.comment if comment is None else comment
        try:
            record = self.session.grade(stop.item, stop.slice_index, grade, comment)
        except (InputError, OSError) as error:  # OSError: disk full / read-only; the grade was not saved
            return self._status(f"NOT SAVED: {error}")
        self.view.comment = ""
        self._update_status(stop.item)
        message = f"Saved: {self._items[stop.item].label}, slice {stop.slice_index}: {record.grade.label}."
        if self.auto_advance and self._navigator.next_ungraded(include_current=False) is None:
            message += " Every slice is graded."
        return self._render(message)

    def undo(self) -> ReviewView:
        if not self._ready():
            return self.view
        stop = self.session.undo()
        if stop is None:
            return self._status("Nothing to undo.")
        self._update_status(stop.item)
        if stop in self._navigator:
            self._navigator.go_to(stop)
        return self._render(f"Undone: {self._items[stop.item].label}, slice {stop.slice_index}.")

    def next(self) -> ReviewView:
        return self._move(lambda n: n.step(1))

    def previous(self) -> ReviewView:
        return self._move(lambda n: n.step(-1))

    def next_ungraded(self) -> ReviewView:
        view = self._move(lambda n: n.next_ungraded())  # the current slice when it is ungraded (e.g. undone)
        return view if self._navigator is None or not self._all_graded() else self._status("Every slice is graded.")

    def go_to(self, item_id: str, slice_index: int) -> ReviewView:
        """Jump to a stop (a row of the flagged-slices table)."""
        if not self._ready():
            return self.view
        stop = Stop(item_id, int(slice_index))
        if stop not in self._navigator:
            self.set_item(ALL_ITEMS)
        try:
            self._navigator.go_to(stop)
        except ValueError:
            return self._status(f"Slice {slice_index} of {item_id} is not on the review path.")
        return self._render()

    def set_comment(self, text: str) -> ReviewView:
        self.view.comment = text
        return self.view

    def _move(self, how) -> ReviewView:
        if not self._ready():
            return self.view
        how(self._navigator)
        return self._render()

    def _all_graded(self) -> bool:
        return self._navigator.graded_count() == len(self._navigator)

    def _ready(self) -> bool:
        return self.session is not None and self._navigator is not None

    # -------------------------------------------------------------- summaries
    def summary(self) -> Table2:
        """Table 2 of this reviewer's grades so far (shown as a table node when there is a scene)."""
        records = self.session.records() if self.session else []
        table = table2(records, f"{self.view.title}")
        if self.scene is not None:
            self.scene.show_summary(table)
        return table

    def export_csv(self, path: str | Path) -> ReviewView:
        """Write this reviewer's grades as the exchange CSV (blinded: sources stay empty here)."""
        from .grades_csv import write_grades_csv

        if not self._ready():
            return self.view
        records = self.session.records()
        write_grades_csv(path, records)
        return self._status(f"Wrote {len(records)} grade(s) to {path}.")

    def flag_rows(self) -> list[FlagRow]:
        """Flagged slices, highest score first (the table the reviewer can click through)."""
        return list(self._flag_rows)

    def _sorted_flag_rows(self) -> list[FlagRow]:
        manifest = self.session.manifest
        rows = [FlagRow(stop.item, self._items[stop.item].label, stop.slice_index, manifest.z_mm(stop.slice_index),
                        flag.score, flag.reason) for stop, flag in self._flags.items()]
        return sorted(rows, key=lambda r: (-(r.score if r.score is not None else -1.0), r.item, r.slice_index))

    # -------------------------------------------------------------- scene and view
    def _update_status(self, item_id: str) -> None:
        """Segment status from its grades: flagged (a major/unacceptable grade), completed, in progress."""
        if self.scene is None:
            return
        grades = [self.session.grade_at(stop) for stop in self._item_stops[item_id]]
        given = [g for g in grades if g is not None]
        if any(g.flags_segment for g in given):
            status = FLAGGED
        elif given and len(given) == len(grades):
            status = COMPLETED
        else:
            status = IN_PROGRESS if given else NOT_STARTED
        self.scene.set_segment_status(self._items[item_id], status)

    def _status(self, message: str) -> ReviewView:
        self.view.status = message
        return self.view

    def _render(self, message: str | None = None) -> ReviewView:
        view = self.view
        if message is not None:
            view.status = message
        if not self._ready():
            return view
        stop = self._navigator.current
        graded = self._navigator.graded_count()
        view.progress, view.progress_maximum = graded, max(len(self._navigator), 1)
        view.progress_text = f"{graded} / {len(self._navigator)} graded"
        view.grade_enabled = view.navigation_enabled = stop is not None
        view.undo_enabled = bool(self.session.state.history)
        view.flag_rows = self._flag_rows
        if stop is None:
            view.slice_text = view.grade_text = view.flag_text = ""
            return view
        item = self._items[stop.item]
        z = self.session.manifest.z_mm(stop.slice_index)
        where = f", z = {z:.1f} mm" if z is not None else ""
        present = "" if stop.slice_index in item.slices else " (beyond the contour)"
        view.slice_text = f"{item.label}: slice {stop.slice_index}{where}{present}"
        grade = self.session.grade_at(stop)
        view.grade_text = grade.label if grade else "not graded"
        flag = self._flags.get(stop)
        view.flag_text = f"QA flag: {flag.reason}" if flag else ""
        if self.scene is not None:
            self.scene.show_slice(item, stop.slice_index, self._position(item, stop.slice_index))
        return view

    def _position(self, item: ReviewItem, slice_index: int) -> np.ndarray:
        """LPS mm to centre the views on: the contour's centre on (or nearest to) that slice."""
        centre = item.centre_near(slice_index)
        geometry = self.session.manifest.geometry
        return geometry.slice_position_lps(slice_index, *(centre if centre else (None, None)))
