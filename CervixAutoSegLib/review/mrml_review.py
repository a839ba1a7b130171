"""MRML glue of the Review panel: load a review into the scene, jump the slice views, segment
statuses, and the flagged-slice and summary tables as ``vtkMRMLTableNode``.

Needs only what the ``slicer-core`` wheel provides (MRML, segmentations, VTK), so the same code
runs inside Slicer and under pytest.  Positions arrive in LPS mm and are converted to Slicer's
RAS here, the one place that talks to the scene.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicer

from .. import mrml
from ..volume import LPS_TO_RAS, Volume
from .controller import FlagRow
from .grades import ORDINAL_GRADES
from .model import Manifest, ReviewItem
from .summary import MEAN_ROW, Table2

log = logging.getLogger(__name__)

REVIEW_ATTRIBUTE = "CervixAutoSeg.Review"
"""Attribute on the nodes a review adds: its review id (so a second open reuses them)."""
SEGMENTATION_SUFFIX = " review contours"
FLAGS_TABLE_SUFFIX = " flagged slices"
SUMMARY_TABLE_SUFFIX = " review summary"
FLAG_COLUMNS = ("Structure", "Slice", "z (mm)", "Score", "Reason")


def load_review(scene, folder: str | Path, manifest: Manifest, volume_node=None):
    """The image (unless ``volume_node`` is given) and the review's contours as nodes; returns both.

    Contours come from the folder's ``contours.seg.nrrd``: one segment per item, named by its id
    (blinded: "Bladder/A", one colour per structure), placed exactly on the image grid.
    """
    from ..image_io import load_image
    from ..segfile import read_segmentation_nrrd
    from .session import CONTOURS_FILE

    if volume_node is None:
        image = load_image(manifest.image_path, series_uid=manifest.series_uid or None)
        volume_node = mrml.node_from_volume(scene, image, f"{manifest.case_id} image")
    contours = read_segmentation_nrrd(Path(folder) / CONTOURS_FILE)
    node = _find_node(scene, "vtkMRMLSegmentationNode", manifest.review_id)
    if node is None:
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(f"{manifest.case_id}{SEGMENTATION_SUFFIX}")
        node.SetAttribute(REVIEW_ATTRIBUTE, manifest.review_id)
        scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    for spec in contours.segments:
        if segmentation.GetSegment(spec.id) is None:
            segmentation.AddSegment(_segment(spec, contours.grid), spec.id)
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    return volume_node, node


def _segment(spec, grid: Volume):
    segment = slicer.vtkSegment()
    segment.SetName(spec.name)
    segment.SetColor(*spec.color)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
                              mrml.oriented_image(spec.mask, grid))
    return segment


def _find_node(scene, class_name: str, review_id: str):
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetAttribute(REVIEW_ATTRIBUTE) == review_id:
            return node
    return None


def show_acquisition_plane(scene, volume_node) -> int:
    """Turn every slice view to the image's own slices (its acquisition plane); returns how many."""
    count = scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")
    for index in range(count):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").RotateToVolumePlane(volume_node)
    return count


def segment_status(segmentation_node, segment_id: str) -> str:
    """Machine-readable status of a segment ("notstarted", "inprogress", "completed", "flagged")."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return logic.GetSegmentStatusAsMachineReadableString(logic.GetSegmentStatus(segment))


def set_segment_status(segmentation_node, segment_id: str, status: str) -> None:
    """Set a segment's status (Segment Editor shows it; "flagged" marks it for revision)."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        log.warning("no segment %r to set the status of", segment_id)
        return
    logic.SetSegmentStatus(segment, logic.GetSegmentStatusFromMachineReadableString(status))


def show_only(segmentation_node, segment_id: str) -> None:
    """Make ``segment_id`` the one visible segment of the node (nothing when it has no display node)."""
    display = segmentation_node.GetDisplayNode()
    if display is None:
        return
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        other = segmentation.GetNthSegmentID(index)
        display.SetSegmentVisibility(other, other == segment_id)


def _table_node(scene, review_id: str, kind: str, name: str):
    """The review's table node of ``kind`` (reused, emptied) or a new one."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLTableNode")
        if node.GetAttribute(REVIEW_ATTRIBUTE) == review_id and node.GetAttribute(f"{REVIEW_ATTRIBUTE}.Kind") == kind:
            node.RemoveAllColumns()
            return node
    node = slicer.vtkMRMLTableNode()
    node.SetName(name)
    node.SetAttribute(REVIEW_ATTRIBUTE, review_id)
    node.SetAttribute(f"{REVIEW_ATTRIBUTE}.Kind", kind)
    scene.AddNode(node)
    return node


def _fill(node, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """String columns (the table shows what the panel shows: counts with their %)."""
    import vtk

    table = node.GetTable()
    for name in columns:
        column = vtk.vtkStringArray()
        column.SetName(name)
        table.AddColumn(column)
    table.SetNumberOfRows(len(rows))
    for row_index, row in enumerate(rows):
        for column_index, value in enumerate(row):
            table.SetValue(row_index, column_index, vtk.vtkVariant(value))
    node.Modified()


def flags_table_node(scene, manifest: Manifest, rows: Sequence[FlagRow]):
    """The flagged slices as a table node (structure, slice, z, score, reason)."""
    node = _table_node(scene, manifest.review_id, "flags", f"{manifest.case_id}{FLAGS_TABLE_SUFFIX}")
    cells = [[r.label, str(r.slice_index), "" if r.z_mm is None else f"{r.z_mm:.1f}",
              "" if r.score is None else f"{r.score:.2f}", r.reason] for r in rows]
    _fill(node, FLAG_COLUMNS, cells)
    return node


def summary_table_node(scene, manifest: Manifest, table: Table2):
    """The paper's Table 2 as a table node: counts (%) per grade, clinically acceptable %, mean row."""
    from .summary import count_text, percent_text

    node = _table_node(scene, manifest.review_id, "summary", f"{manifest.case_id}{SUMMARY_TABLE_SUFFIX}")
    columns = ["Structure", *(g.label for g in ORDINAL_GRADES), "Clinically acceptable", "Not assessable"]
    cells = [[row.structure, *(count_text(row, g) for g in ORDINAL_GRADES), percent_text(row.clinically_acceptable),
              str(row.not_assessable)] for row in table.rows]
    cells.append([MEAN_ROW, *(percent_text(p) for p in table.mean_percents),
                  percent_text(table.mean_clinically_acceptable), ""])
    _fill(node, columns, cells)
    return node


class MrmlReviewScene:
    """:class:`~CervixAutoSegLib.review.controller.ReviewScene` on a real MRML scene."""

    def __init__(self, scene, manifest: Manifest, segmentation_node=None):
        self.scene, self.manifest, self.segmentation_node = scene, manifest, segmentation_node
        self.flags_node = self.summary_node = None
        self.last_jump_ras: np.ndarray | None = None

    def show_slice(self, item: ReviewItem, slice_index: int, position_lps: np.ndarray) -> None:
        """Centre every slice view on ``position_lps`` (the contour on that slice); blinded, show only
        the contour under review (AI and manual of a structure share one colour)."""
        ras = LPS_TO_RAS @ np.asarray(position_lps, dtype=float)
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, *(float(v) for v in ras))
        self.last_jump_ras = ras
        if self.manifest.blinded and self.segmentation_node is not None:
            show_only(self.segmentation_node, item.id)

    def set_segment_status(self, item: ReviewItem, status: str) -> None:
        if self.segmentation_node is not None:
            set_segment_status(self.segmentation_node, item.id, status)

    def show_flags(self, rows: Sequence[FlagRow]) -> None:
        self.flags_node = flags_table_node(self.scene, self.manifest, rows)

    def show_summary(self, table: Table2) -> None:
        self.summary_node = summary_table_node(self.scene, self.manifest, table)
