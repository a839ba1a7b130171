"""Navigation (issue 16, "Navigation tests"): empty slices skipped, the slice beyond each end included,
next-ungraded right after undo, flagged-first order follows report.json (its every flag shape)."""

from __future__ import annotations

from review_cases import report_document, tiny_review

from CervixAutoSegLib.review.controller import ReviewController
from CervixAutoSegLib.review.flags import SliceFlag, report_flags
from CervixAutoSegLib.review.navigation import (FLAGGED_FIRST, Navigator, Stop, flags_by_item, item_stops,
                                                ordered_stops, review_slices)
from CervixAutoSegLib.review.session import read_manifest


def test_empty_slices_are_skipped_and_the_slice_beyond_each_end_is_visited():
    assert review_slices([4, 5, 6], 20) == [3, 4, 5, 6, 7]
    # Two runs: the gap's middle (slice 8) is empty and skipped; each run gets its neighbours.
    assert review_slices([3, 4, 5, 10, 11], 20) == [2, 3, 4, 5, 6, 9, 10, 11, 12]
    assert review_slices([0, 1, 19], 20) == [0, 1, 2, 18, 19]  # clipped to the image
    assert review_slices([], 20) == [] and review_slices([7], 20, extra=[15]) == [6, 7, 8, 15]


def test_report_flags_are_read_in_every_shape_and_merged():
    flags = {(f.structure, f.slice_index): f for f in report_flags(report_document())}
    assert set(flags) == {("Bladder", 3), ("Rectum", 6), ("Rectum", 7), ("CTVp", 8)}  # CTVp 5 is not flagged
    assert flags[("Bladder", 3)].reason == "Bladder ends abruptly; tapering" and flags[("Bladder", 3)].score == 0.6
    assert flags[("CTVp", 8)].reason == "thin; shifted" and flags[("Rectum", 6)].score is None
    by_structure = {"qa": {"slice_flags": {"Rectum": [{"slice_index": 12, "reason": "hole", "score": 0.7},
                                                      {"slice_index": "x"}, "junk"]}, "flagged_slices": 3}}
    assert report_flags(by_structure) == [SliceFlag("Rectum", 12, "hole", 0.7)]
    assert report_flags({"qa": "broken"}) == [] and report_flags({}) == []


def test_flagged_first_follows_the_report_scores_then_natural_order(tmp_path):
    flags = [f.to_json() for f in report_flags(report_document())] + [
        SliceFlag("Rectum", 20, "area jump", 0.95).to_json()]
    manifest = read_manifest(tiny_review(tmp_path / "r", flags=flags))
    by_item = flags_by_item(manifest.items, (SliceFlag.from_json(f) for f in manifest.flags))
    stops = item_stops(manifest.items, manifest.geometry.n_slices, by_item)
    ordered = ordered_stops(stops, by_item, FLAGGED_FIRST)
    assert ordered[:4] == [Stop("Rectum", 20), Stop("Bladder", 3), Stop("Rectum", 6), Stop("Rectum", 7)]
    assert ordered[4:] == [s for s in stops if s not in ordered[:4]]
    assert Stop("CTVp", 8) not in stops  # no CTVp contour in this review: its flag has nothing to attach to
    controller = ReviewController()
    controller.open(tmp_path / "r", "Dr A")
    view = controller.set_flagged_first(True)
    assert view.slice_text.startswith("Rectum: slice 20") and view.flag_text == "QA flag: area jump"
    assert [(row.item, row.slice_index) for row in view.flag_rows][:2] == [("Rectum", 20), ("Bladder", 3)]
    controller.close()


def test_next_ungraded_comes_back_right_after_undo(tmp_path):
    controller = ReviewController()
    controller.open(tiny_review(tmp_path / "r", items=(("Bladder", range(4, 8)),)), "Dr A")
    view = controller.set_review_mode(True)
    assert view.slice_text.startswith("Bladder: slice 3") and "beyond the contour" in view.slice_text
    for key in "12123":
        view = controller.key(key)
    assert view.slice_text.startswith("Bladder: slice 8") and view.progress_text == "5 / 6 graded"
    view = controller.key("Ctrl+Z")  # undoes slice 7: the cursor goes back there
    assert view.slice_text.startswith("Bladder: slice 7") and view.grade_text == "not graded"
    controller.key("Left")
    controller.key("Left")
    view = controller.key("Space")  # from slice 5: 5 and 6 are graded, 7 (the undone one) is next
    assert view.slice_text.startswith("Bladder: slice 7")
    view = controller.key("4")  # auto-advance: to the last ungraded slice, 8
    assert view.slice_text.startswith("Bladder: slice 8") and view.progress_text == "5 / 6 graded"
    view = controller.key("0")
    assert view.progress_text == "6 / 6 graded" and view.status.endswith("Every slice is graded.")
    controller.close()


def test_the_navigator_clamps_and_reports_all_graded():
    graded: set[Stop] = set()
    navigator = Navigator([Stop("A", k) for k in range(3)], graded.__contains__)
    assert navigator.step(-5) == Stop("A", 0) and navigator.step(9) == Stop("A", 2)
    graded.update(navigator.stops)
    assert navigator.next_ungraded() is None and navigator.graded_count() == 3


def test_a_cohort_opens_the_next_case_and_blinded_cases_come_in_each_reviewers_own_order(tmp_path):
    import json

    from CervixAutoSegLib.review.session import MANIFEST_FILE
    from CervixAutoSegLib.review.worklist import case_order, next_case, review_folders

    cohort = tmp_path / "cohort"
    for name in ("case-a", "case-b", "open-1"):
        tiny_review(cohort / name, items=(("Bladder", range(4, 6)),))
    for name in [f"blind-{i:02d}" for i in range(8)]:
        folder = tiny_review(cohort / name, items=(("Bladder/A", range(4, 6)),))
        document = json.loads((folder / MANIFEST_FILE).read_text())
        document["blinded"] = True
        (folder / MANIFEST_FILE).write_text(json.dumps(document))
    folders = review_folders(cohort)
    first, second = case_order(folders, "Dr A"), case_order(folders, "Dr B")
    assert [f.name for f in first[:3]] == ["case-a", "case-b", "open-1"] and sorted(first) == sorted(folders)
    assert first[3:] != second[3:] and first == case_order(folders, "Dr A")  # own order, stable on reopening
    controller = ReviewController()
    controller.open(cohort, "Dr A")
    assert controller.session.folder.name == "case-a"
    controller.set_review_mode(True)
    for key in "1111":  # slices 3, 4, 5, 6: case-a done
        controller.key(key)
    controller.close()
    assert next_case(cohort, "Dr A").name == "case-b" and next_case(cohort, "Dr B").name == "case-a"
    assert controller.open(cohort, "Dr A").title.startswith("Case case-test - Dr A")
    assert controller.session.folder.name == "case-b"
    controller.close()
