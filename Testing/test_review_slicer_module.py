"""CervixAutoSegReview.py itself, loaded with stand-ins for Slicer's GUI (slicer_gui_stubs) over a real slicer-core
scene: the thin shell binds widgets and hotkeys to the review controller (issue 16, item 6)."""

from __future__ import annotations

import csv
import shutil
import sys
import types
from pathlib import Path

import pytest
from review_cases import ai_output, ct_series

from CervixAutoSegLib.review.controller import HOTKEY_NAMES
from CervixAutoSegLib.review.session import StartRequest, start_review

slicer = pytest.importorskip("slicer")
import slicer_gui_stubs as stubs  # noqa: E402

from CervixAutoSegLib.review import mrml_review  # noqa: E402

MODULE_FILE = Path(__file__).resolve().parents[1] / "CervixAutoSeg" / "CervixAutoSegReview.py"
MAIN_WINDOW = object()


class TableView(stubs.Widget):
    """qMRMLTableView: shows a table node (setMRMLTableNode), emits clicked(QModelIndex) on a row."""

    def __init__(self, class_name, name=""):
        super().__init__(class_name, name)
        self.node = self.scene = None

    def setMRMLScene(self, scene):
        self.scene = scene

    def setMRMLTableNode(self, node):
        self.node = node


class Shortcut(stubs.Widget):
    """qt.QShortcut(QKeySequence, parent): fired by the test with ``emit("activated()")``."""

    made: list = []  # noqa: RUF012 - every shortcut the panel made, for the test to inspect

    def __init__(self, key, parent):
        super().__init__("QShortcut")
        self.key, self.parent, self.enabled = key, parent, True
        Shortcut.made.append(self)

    def setEnabled(self, enabled):
        self.enabled = enabled

    def setParent(self, parent):
        self.parent = parent

    def deleteLater(self):
        self.deleted = True


@pytest.fixture(scope="module")
def review_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-gui")
    reference = ct_series(root / "dicom")
    ai = ai_output(root / "ai", reference)
    start_review(StartRequest(image=root / "dicom", segmentations=(str(ai),), out=root / "review", reviewer="Dr A"))
    return root / "review"


@pytest.fixture
def panel(monkeypatch, review_source, tmp_path):
    folder = tmp_path / "review"
    shutil.copytree(review_source, folder, ignore=shutil.ignore_patterns("grades"))
    scene = slicer.vtkMRMLScene()
    red = slicer.vtkMRMLSliceNode()
    red.SetLayoutName("Red")
    scene.AddNode(red)
    monkeypatch.setitem(stubs.WIDGET_CLASSES, "qMRMLTableView", TableView)
    gui = stubs.SlicerGui(monkeypatch, slicer, str(MODULE_FILE), scene=scene, temporary_path=str(tmp_path))
    qt = sys.modules["qt"]
    Shortcut.made = []
    qt.QShortcut, qt.QKeySequence = Shortcut, str
    qt.QFileDialog = types.SimpleNamespace(getExistingDirectory=lambda *a: str(folder),
                                           getSaveFileName=lambda *a: str(tmp_path / "mine.csv"))
    sys.modules["slicer.util"].mainWindow = lambda: MAIN_WINDOW
    module = gui.load_module("CervixAutoSegReview")
    parent = stubs.ModuleParent()
    module.CervixAutoSegReview(parent)
    widget = module.CervixAutoSegReviewWidget(parent)
    widget.setup()
    widget.enter()
    yield gui, widget, folder, scene
    widget.cleanup()


def open_review(gui, widget, reviewer="Dr A"):
    gui.widgets["browseButton"].emit("clicked(bool)")
    gui.widgets["reviewerLineEdit"].text = reviewer
    gui.widgets["openButton"].emit("clicked(bool)")
    assert gui.errors == []


def active_shortcuts():
    return {s.key: s for s in Shortcut.made if s.enabled}


def test_before_opening_nothing_can_be_graded(panel):
    gui, widget, _, _ = panel
    assert gui.widgets["titleLabel"].text == "No review open"
    assert not gui.widgets["acceptableButton"].enabled and not gui.widgets["reviewModeCheckBox"].enabled
    assert Shortcut.made == []


def test_open_fills_the_panel_and_the_flag_table(panel):
    gui, widget, folder, scene = panel
    open_review(gui, widget)
    combo = gui.widgets["structureComboBox"]
    assert [combo.itemData(i) for i in range(combo.count)] == ["", "Bladder", "Rectum", "CTVn", "CTVp"]
    assert gui.widgets["titleLabel"].text.startswith("Case case-") and gui.widgets["acceptableButton"].enabled
    assert gui.widgets["sliceLabel"].text.startswith("Bladder: slice 2")
    flags = gui.widgets["flagsTableView"].node
    assert flags.GetClassName() == "vtkMRMLTableNode" and flags.GetCellText(0, 0) == "CTVp"
    gui.widgets["flagsTableView"].emit("clicked(QModelIndex)", types.SimpleNamespace(row=lambda: 0))
    assert gui.widgets["sliceLabel"].text.startswith("CTVp: slice 8")
    assert gui.widgets["flagLabel"].text == "QA flag: thin; shifted"


def test_hotkeys_exist_only_in_review_mode_and_grade_through_the_controller(panel):
    gui, widget, _, scene = panel
    open_review(gui, widget)
    assert active_shortcuts() == {}  # Segment Editor keeps its number keys
    box = gui.widgets["reviewModeCheckBox"]
    box.checked = True
    box.emit("toggled(bool)", True)
    keys = active_shortcuts()
    assert set(keys) == set(HOTKEY_NAMES) and all(s.parent is MAIN_WINDOW for s in keys.values())
    keys["3"].emit("activated()")  # Bladder slice 2: major revision
    segmentation = widget.controller.scene.segmentation_node
    assert mrml_review.segment_status(segmentation, "Bladder") == "flagged"
    assert gui.widgets["progressBar"].value == 1 and gui.widgets["sliceLabel"].text.startswith("Bladder: slice 3")
    keys["Ctrl+Z"].emit("activated()")
    assert gui.widgets["progressBar"].value == 0 and mrml_review.segment_status(segmentation, "Bladder") == "notstarted"
    widget.exit()  # leaving the module frees the keys ...
    assert active_shortcuts() == {}
    widget.enter()  # ... and coming back in review mode binds them again
    assert set(active_shortcuts()) == set(HOTKEY_NAMES)
    box.checked = False
    box.emit("toggled(bool)", False)
    assert active_shortcuts() == {}


def test_buttons_grade_with_the_comment_and_summary_and_export_work(panel, tmp_path):
    gui, widget, _, scene = panel
    open_review(gui, widget)
    comment = gui.widgets["commentLineEdit"]
    comment.text = "dome cut off"
    comment.emit("textChanged(QString)", "dome cut off")
    gui.widgets["minorButton"].emit("clicked(bool)")
    assert comment.text == "" and widget.controller.session.records()[0].comment == "dome cut off"
    gui.widgets["notAssessableButton"].emit("clicked(bool)")
    gui.widgets["previousButton"].emit("clicked(bool)")
    assert gui.widgets["gradeLabel"].text == "Not assessable"
    gui.widgets["summaryButton"].emit("clicked(bool)")
    summary = gui.widgets["summaryTableView"].node
    assert summary.GetCellText(0, 2) == "1 (100.00%)" and summary.GetCellText(0, 6) == "1"
    gui.widgets["exportButton"].emit("clicked(bool)")
    rows = list(csv.DictReader(open(tmp_path / "mine.csv", encoding="utf-8")))
    assert [(r["structure"], r["slice_index"], r["grade"]) for r in rows] == [("Bladder", "2", "minor"),
                                                                              ("Bladder", "3", "not_assessable")]
