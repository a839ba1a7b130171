"""CervixAutoSeg Review: grade every slice of every structure, as the ResAU-Net paper's oncologists did.

This file is the thin Slicer shell of the review panel.  What the panel shows and decides lives in
``CervixAutoSegLib.review.controller`` (tested without Qt), scene work in
``CervixAutoSegLib.review.mrml_review``, grades on disk in ``CervixAutoSegLib.review.storage``.
Review folders are made by ``cervixautoseg review start`` (or by the same call from Python).
"""

# No "from __future__ import annotations": this file must stay Python 3.9 syntax until the
# version check below has passed (Slicer 5.8 runs 3.9), like CervixAutoSeg.py.
import os
import sys

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

# In the source tree the package sits next to this module's folder; in an installed
# extension both are in the same qt-scripted-modules folder.
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_REPOSITORY, "CervixAutoSegLib")) and _REPOSITORY not in sys.path:
    sys.path.append(_REPOSITORY)

MINIMUM_SLICER_VERSION = (5, 10)
MINIMUM_PYTHON_VERSION = (3, 10)
GRADE_BUTTONS = (
    ("acceptableButton", "acceptable"),
    ("minorButton", "minor"),
    ("majorButton", "major"),
    ("unacceptableButton", "unacceptable"),
    ("notAssessableButton", "not_assessable"),
)
"""Button name → grade value (the grades CSV spelling)."""


def unsupportedReason():
    """One line when this Slicer is too old for the package, else ''."""
    version = (slicer.app.majorVersion, slicer.app.minorVersion)
    if version >= MINIMUM_SLICER_VERSION and sys.version_info[:2] >= MINIMUM_PYTHON_VERSION:
        return ""
    return ("CervixAutoSeg Review needs 3D Slicer {}.{} or later (Python {}.{}+); this is Slicer {}.{}: install a "
            "newer 3D Slicer.".format(*MINIMUM_SLICER_VERSION, *MINIMUM_PYTHON_VERSION, *version))


class CervixAutoSegReview(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CervixAutoSeg Review"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["CervixAutoSeg team"]
        self.parent.helpText = (
            "Grade each slice of each contour as acceptable / minor revision / major revision / unacceptable "
            "(or not assessable), with hotkeys 1-4 and 0/N in review mode; every grade is saved to disk before "
            "the next slice appears.  Summaries (the paper's Table 2) and agreement between reviewers: "
            "'cervixautoseg review summary|agreement'."
        )
        self.parent.acknowledgementText = "Grading scale and Table 2: Liu et al., ResAU-Net for cervical-cancer CT."


class CervixAutoSegReviewWidget(ScriptedLoadableModuleWidget):
    """Binds the .ui widgets and the hotkeys to a :class:`CervixAutoSegLib.review.controller.ReviewController`."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.controller = None
        self._shortcuts = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        reason = unsupportedReason()
        if reason:
            label = qt.QLabel(reason)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CervixAutoSegReview.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CervixAutoSegReviewLogic()
        self.ui.browseButton.connect("clicked(bool)", self.onBrowse)
        self.ui.openButton.connect("clicked(bool)", self.onOpen)
        self.ui.structureComboBox.connect("currentIndexChanged(int)", self.onStructureChanged)
        self.ui.flaggedFirstCheckBox.connect("toggled(bool)", self.onFlaggedFirstToggled)
        self.ui.reviewModeCheckBox.connect("toggled(bool)", self.onReviewModeToggled)
        self.ui.commentLineEdit.connect("textChanged(QString)", self.onCommentChanged)
        for name, grade in GRADE_BUTTONS:
            getattr(self.ui, name).connect("clicked(bool)", lambda checked=False, grade=grade: self.onGrade(grade))
        self.ui.previousButton.connect("clicked(bool)", self.onPrevious)
        self.ui.nextButton.connect("clicked(bool)", self.onNext)
        self.ui.nextUngradedButton.connect("clicked(bool)", self.onNextUngraded)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.flagsTableView.connect("clicked(QModelIndex)", self.onFlagClicked)
        self.ui.summaryButton.connect("clicked(bool)", self.onSummary)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.render()

    def cleanup(self):
        self.unbindShortcuts()
        if self.controller is not None:
            self.controller.close()  # final snapshot; releases this reviewer's log

    def enter(self):
        if self.controller is not None and self.controller.view.hotkeys_active:
            self.bindShortcuts()

    def exit(self):
        self.unbindShortcuts()  # the number keys belong to Segment Editor again

    # ------------------------------------------------------------- hotkeys
    def bindShortcuts(self):
        """Application shortcuts for every review key, only while review mode is on."""
        from CervixAutoSegLib.review.controller import HOTKEY_NAMES

        self.unbindShortcuts()
        for name in HOTKEY_NAMES:
            shortcut = qt.QShortcut(qt.QKeySequence(name), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda name=name: self.onKey(name))
            self._shortcuts.append(shortcut)

    def unbindShortcuts(self):
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = []

    # ------------------------------------------------------------- events
    def onBrowse(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Review folder")
        if folder:
            self.ui.folderLineEdit.text = folder

    def onOpen(self):
        with slicer.util.tryWithErrorDisplay("Opening the review failed.", waitCursor=True):
            if self.controller is not None:
                self.controller.close()
            self.controller = self.logic.open(self.ui.folderLineEdit.text, self.ui.reviewerLineEdit.text)
            if self.logic.flagsNode is not None:
                self.ui.flagsTableView.setMRMLTableNode(self.logic.flagsNode)
            self.render()

    def onStructureChanged(self, index):
        value = self.ui.structureComboBox.itemData(index)
        if self.controller is not None and value is not None:
            self.render(self.controller.set_item(value))

    def onFlaggedFirstToggled(self, checked):
        if self.controller is not None:
            self.render(self.controller.set_flagged_first(checked))

    def onReviewModeToggled(self, checked):
        if self.controller is None:
            return
        view = self.controller.set_review_mode(checked)
        if view.hotkeys_active:
            self.bindShortcuts()
        else:
            self.unbindShortcuts()
        self.render(view)

    def onCommentChanged(self, text):
        if self.controller is not None:
            self.controller.set_comment(text)

    def onGrade(self, grade):
        if self.controller is not None:
            self.render(self.controller.grade(grade))

    def onKey(self, name):
        if self.controller is not None:
            self.render(self.controller.key(name))

    def onPrevious(self):
        if self.controller is not None:
            self.render(self.controller.previous())

    def onNext(self):
        if self.controller is not None:
            self.render(self.controller.next())

    def onNextUngraded(self):
        if self.controller is not None:
            self.render(self.controller.next_ungraded())

    def onUndo(self):
        if self.controller is not None:
            self.render(self.controller.undo())

    def onFlagClicked(self, index):
        if self.controller is None:
            return
        rows = self.controller.view.flag_rows
        if 0 <= index.row() < len(rows):
            self.render(self.controller.go_to(rows[index.row()].item, rows[index.row()].slice_index))

    def onSummary(self):
        if self.controller is not None:
            self.controller.summary()
            self.ui.summaryTableView.setMRMLTableNode(self.controller.scene.summary_node)

    def onExport(self):
        if self.controller is None:
            return
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export grades", "grades.csv",
                                              "Grades CSV (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
                self.render(self.controller.export_csv(path))

    # ------------------------------------------------------------- render
    def render(self, view=None):
        """Copy the controller's ReviewView into the widgets (no decisions here)."""
        from CervixAutoSegLib.review.controller import ReviewView

        view = view or (self.controller.view if self.controller is not None else ReviewView())
        self.ui.titleLabel.text = view.title
        self._fillStructures(view)
        self._setChecked(self.ui.flaggedFirstCheckBox, view.flagged_first)
        self._setChecked(self.ui.reviewModeCheckBox, view.review_mode)
        self.ui.reviewModeCheckBox.enabled = view.is_open
        self.ui.flaggedFirstCheckBox.enabled = view.is_open
        self.ui.structureComboBox.enabled = view.is_open
        self.ui.sliceLabel.text = view.slice_text
        self.ui.gradeLabel.text = view.grade_text
        self.ui.flagLabel.text = view.flag_text
        for name, _ in GRADE_BUTTONS:
            getattr(self.ui, name).enabled = view.grade_enabled
        for widget in (self.ui.previousButton, self.ui.nextButton, self.ui.nextUngradedButton):
            widget.enabled = view.navigation_enabled
        self.ui.undoButton.enabled = view.undo_enabled
        if self.ui.commentLineEdit.text != view.comment:
            wasBlocked = self.ui.commentLineEdit.blockSignals(True)
            self.ui.commentLineEdit.text = view.comment
            self.ui.commentLineEdit.blockSignals(wasBlocked)
        self.ui.progressBar.maximum = view.progress_maximum
        self.ui.progressBar.value = view.progress
        self.ui.progressBar.format = view.progress_text or "%p%"
        self.ui.statusLabel.text = view.status
        self.ui.summaryButton.enabled = view.is_open
        self.ui.exportButton.enabled = view.is_open

    def _fillStructures(self, view):
        combo = self.ui.structureComboBox
        values = [choice.value for choice in view.items]
        if [combo.itemData(i) for i in range(combo.count)] != values:
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for choice in view.items:
                combo.addItem(choice.label, choice.value)
            combo.blockSignals(wasBlocked)
        index = combo.findData(view.item)
        if index >= 0 and combo.currentIndex != index:
            wasBlocked = combo.blockSignals(True)
            combo.setCurrentIndex(index)
            combo.blockSignals(wasBlocked)

    @staticmethod
    def _setChecked(box, checked):
        if box.checked != checked:
            wasBlocked = box.blockSignals(True)
            box.checked = checked
            box.blockSignals(wasBlocked)


class CervixAutoSegReviewLogic(ScriptedLoadableModuleLogic):
    """Console entry point::

        controller = slicer.util.getModuleLogic("CervixAutoSegReview").open("/data/review-07", "Dr A")
        controller.set_review_mode(True); controller.key("1")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.flagsNode = None

    def open(self, folder, reviewer):
        """Load the review's image and contours, turn the views to its slices; return its controller.

        ``folder`` may be a cohort (a folder of review folders): the reviewer's next case is opened.
        """
        from CervixAutoSegLib.review import mrml_review
        from CervixAutoSegLib.review.controller import ReviewController
        from CervixAutoSegLib.review.session import read_manifest
        from CervixAutoSegLib.review.worklist import resolve

        folder = resolve(folder, reviewer)
        manifest = read_manifest(folder)
        volumeNode, segmentationNode = mrml_review.load_review(slicer.mrmlScene, folder, manifest)
        mrml_review.show_acquisition_plane(slicer.mrmlScene, volumeNode)
        scene = mrml_review.MrmlReviewScene(slicer.mrmlScene, manifest, segmentationNode)
        controller = ReviewController(scene)
        controller.open(folder, reviewer)
        self.flagsNode = scene.flags_node
        return controller


class CervixAutoSegReviewTest(ScriptedLoadableModuleTest):
    """Slicer self-test: a synthetic review graded through the logic's controller."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_grade_a_synthetic_review()

    def test_grade_a_synthetic_review(self):
        import tempfile
        from pathlib import Path

        from CervixAutoSegLib.review import mrml_review
        from CervixAutoSegLib.review.benchmark import synthetic_review

        reason = unsupportedReason()
        if reason:
            self.skipTest(reason)
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as temporary:
            folder = synthetic_review(Path(temporary))
            self.delayDisplay("Grading a synthetic review")
            controller = CervixAutoSegReviewLogic().open(folder, "self-test")
            controller.set_review_mode(True)
            for key in "1234":
                controller.key(key)
            segmentation = controller.scene.segmentation_node
            self.assertEqual(mrml_review.segment_status(segmentation, "Bladder"), "flagged")
            self.assertEqual(controller.summary().rows[0].n, 4)
            controller.close()
        self.delayDisplay("Test passed")
