"""The Review panel's controller on a real MRML scene (slicer-core): the review loaded as nodes, slice views
turned to the acquisition plane and jumped to the slice under review, segment statuses from the grades
(major/unacceptable → "flagged"), the flagged-slice and Table 2 table nodes, hotkeys only in review mode."""

from __future__ import annotations

import numpy as np
import pytest
from review_cases import ai_output, ct_series

from CervixAutoSegLib.review.controller import COMPLETED, FLAGGED, IN_PROGRESS, NOT_STARTED, ReviewController
from CervixAutoSegLib.review.session import StartRequest, read_manifest, start_review

slicer = pytest.importorskip("slicer")
from CervixAutoSegLib.review import mrml_review  # noqa: E402 - needs slicer-core


@pytest.fixture(scope="module")
def review_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-mrml")
    reference = ct_series(root / "dicom")
    ai = ai_output(root / "ai", reference)
    start_review(StartRequest(image=root / "dicom", segmentations=(str(ai),), out=root / "review",
                              reviewer="Dr A"))
    return root / "review"


@pytest.fixture
def loaded(review_folder, tmp_path):
    """A copy of the review (grades start empty), loaded into a fresh scene with one slice view."""
    import shutil

    folder = tmp_path / "review"
    shutil.copytree(review_folder, folder, ignore=shutil.ignore_patterns("grades"))
    scene = slicer.vtkMRMLScene()
    slice_node = slicer.vtkMRMLSliceNode()
    slice_node.SetLayoutName("Red")
    slice_node.SetOrientation("Sagittal")  # wrong on purpose: the review turns it to the image's own plane
    scene.AddNode(slice_node)
    manifest = read_manifest(folder)
    volume, segmentation = mrml_review.load_review(scene, folder, manifest)
    controller = ReviewController(mrml_review.MrmlReviewScene(scene, manifest, segmentation))
    yield folder, scene, slice_node, volume, segmentation, controller
    controller.close()


def slice_normal_and_offset(slice_node) -> tuple[np.ndarray, float]:
    matrix = slice_node.GetSliceToRAS()
    normal = np.array([matrix.GetElement(r, 2) for r in range(3)])
    origin = np.array([matrix.GetElement(r, 3) for r in range(3)])
    return normal, float(origin @ normal)


def test_the_review_is_loaded_as_nodes_on_the_image_grid(loaded):
    folder, scene, slice_node, volume, segmentation, _ = loaded
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i)
           for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert ids == ["Bladder", "Rectum", "CTVn", "CTVp"]
    assert mrml_review.show_acquisition_plane(scene, volume) == 1
    normal, _ = slice_normal_and_offset(slice_node)
    assert abs(abs(normal[2]) - 1) < 1e-6  # axial series: the view now shows its axial slices
    again, _ = mrml_review.load_review(scene, folder, read_manifest(folder), volume)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # reopening reuses the node


def test_the_views_jump_to_the_slice_under_review(loaded):
    folder, scene, slice_node, volume, segmentation, controller = loaded
    mrml_review.show_acquisition_plane(scene, volume)
    view = controller.open(folder, "Dr A")
    assert view.slice_text.startswith("Bladder: slice 2")  # one beyond the contour's first slice
    manifest = read_manifest(folder)
    normal, offset = slice_normal_and_offset(slice_node)
    # RAS z of slice 2 (the series is axial, head first: S = z).
    assert offset * np.sign(normal[2]) == pytest.approx(manifest.geometry.z_mm[2], abs=1e-3)
    controller.set_review_mode(True)
    controller.key("Right")
    _, offset = slice_normal_and_offset(slice_node)
    assert offset * np.sign(normal[2]) == pytest.approx(manifest.geometry.z_mm[3], abs=1e-3)


def test_segment_statuses_follow_the_grades(loaded):
    folder, _, _, _, segmentation, controller = loaded
    controller.open(folder, "Dr A")
    status = lambda segment: mrml_review.segment_status(segmentation, segment)  # noqa: E731
    assert status("Bladder") == NOT_STARTED
    assert controller.key("1").status == controller.view.status  # review mode off: the key does nothing
    assert status("Bladder") == NOT_STARTED and controller.session.records() == []
    controller.set_review_mode(True)
    controller.key("1")
    assert status("Bladder") == IN_PROGRESS
    for _ in range(7):
        controller.key("2")
    assert status("Bladder") == COMPLETED and status("Rectum") == NOT_STARTED
    controller.key("3")  # the first Rectum slice: major revision
    assert status("Rectum") == FLAGGED
    controller.key("Ctrl+Z")
    assert status("Rectum") == NOT_STARTED


def test_flag_and_summary_tables_are_table_nodes(loaded):
    folder, scene, _, _, _, controller = loaded
    controller.open(folder, "Dr A")
    flags = controller.scene.flags_node
    assert flags.GetNumberOfColumns() == 5 and flags.GetColumnName(4) == "Reason"
    rows = [[flags.GetCellText(r, c) for c in range(5)] for r in range(flags.GetNumberOfRows())]
    assert rows[0][:2] == ["CTVp", "8"] and rows[0][3] == "0.91"  # highest score first
    controller.set_review_mode(True)
    for key in "1124":
        controller.key(key)
    table = controller.summary()
    node = controller.scene.summary_node
    assert scene.GetNodeByID(node.GetID()) is node
    assert [node.GetColumnName(c) for c in range(3)] == ["Structure", "Acceptable", "Minor revision"]
    assert [node.GetCellText(0, c) for c in range(5)] == ["Bladder", "2 (50.00%)", "1 (25.00%)", "0 (0.00%)",
                                                          "1 (25.00%)"]
    assert node.GetCellText(1, 0) == "Mean percentage" and table.rows[0].n == 4
    controller.summary()
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 2  # updated in place, not piled up


def test_resume_where_the_reviewer_stopped_and_export(loaded, tmp_path):
    folder, _, _, _, _, controller = loaded
    controller.open(folder, "Dr A")
    controller.set_review_mode(True)
    for key in "112":
        controller.key(key)
    controller.close()
    view = controller.open(folder, "Dr A")
    assert view.slice_text.startswith("Bladder: slice 5") and view.progress_text.startswith("3 / ")
    assert controller.export_csv(tmp_path / "mine.csv").status == f"Wrote 3 grade(s) to {tmp_path / 'mine.csv'}."
    assert controller.open(folder, " ").status.startswith("Enter your name")


def test_blinded_reviews_show_only_the_contour_under_review(tmp_path):
    from review_cases import manual_rtstruct

    reference = ct_series(tmp_path / "dicom")
    ai, manual = ai_output(tmp_path / "ai", reference), manual_rtstruct(tmp_path / "manual.dcm", reference)
    folder = tmp_path / "blind"
    start_review(StartRequest(image=tmp_path / "dicom", segmentations=(str(ai), str(manual)), out=folder,
                              reviewer="Dr A", blinded=True, key=tmp_path / "key.json", seed=2))
    scene = slicer.vtkMRMLScene()
    manifest = read_manifest(folder)
    _, segmentation = mrml_review.load_review(scene, folder, manifest)
    controller = ReviewController(mrml_review.MrmlReviewScene(scene, manifest, segmentation))
    view = controller.open(folder, "Dr A")
    current = controller._navigator.current.item
    display = segmentation.GetDisplayNode()
    visible = [i.id for i in manifest.items if display.GetSegmentVisibility(i.id)]
    assert visible == [current] and view.slice_text.startswith(f"{current.split('/')[0]} - contour ")
    assert view.flag_rows == [] and "blinded" in view.title
    controller.close()
