"""CervixAutoSeg.py itself, loaded with stand-ins for Slicer's GUI (slicer_gui_stubs) over a real slicer-core scene.

Each test is one defect of issue 12 as the panel meets it: the parameter-node GUI tag (item 4),
which volume the panel picks (item 5), install failures on the Auto-contour click (item 2),
the self-test's dependencies (item 6), Export RTSTRUCT (item 8) and an older Slicer (item 1).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

import slicer_gui_stubs as stubs
from test_mrml import ct_image, vector_volume

from CervixAutoSegLib import controller, dependencies, mrml

MODULE_FILE = Path(__file__).resolve().parents[1] / "CervixAutoSeg" / "CervixAutoSeg.py"
NODE_SIGNAL = "currentNodeChanged(vtkMRMLNode*)"


@pytest.fixture(autouse=True)
def quick_device_probe(monkeypatch):
    """The panel probes devices in a child process; here the child just prints a CPU-only answer."""
    monkeypatch.setattr(controller, "device_probe_command",
                        lambda python=None: [sys.executable, "-c", "print('{\"cpu\": \"CPU\"}')"])


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def make_gui(monkeypatch, scene, tmp_path):
    made = []

    def make(**options):
        options.setdefault("scene", scene)
        options.setdefault("temporary_path", str(tmp_path))
        made.append(stubs.SlicerGui(monkeypatch, slicer, str(MODULE_FILE), **options))
        return made[-1]

    yield make
    for gui in made:  # as Slicer on exit: the panels stop observing the scene
        for widget in gui.panels:
            widget.cleanup()


def open_panel(gui):
    module = gui.load_module()
    return module, gui.open_panel(module)


def ct_node(scene, name="CT"):
    """A volume node Slicer's DICOM import marked as CT."""
    node = mrml.node_from_volume(scene, ct_image("oblique"), name)
    node.SetAttribute("DICOM.Modality", "CT")
    return node


# ------------------------------------------------------------------ item 4: GUI tag
@pytest.mark.parametrize("wrapper_returns_tag", [True, False], ids=["slicer-5.10-wrapper", "slicer-5.8-wrapper"])
def test_entering_the_module_again_and_again_keeps_one_set_of_parameter_connectors(make_gui, scene,
                                                                                   wrapper_returns_tag):
    """Slicer 5.8's connectGui returns no tag: disconnectGui(None) then removed nothing and connectors piled up."""
    gui = make_gui(wrapper_returns_tag=wrapper_returns_tag)
    _, widget = open_panel(gui)
    selector = gui.widgets["inputVolumeSelector"]
    ours = len(selector.connections(NODE_SIGNAL))  # the panel's own onInputChanged + one parameter connector
    for _ in range(4):
        widget.exit()
        widget.enter()
        widget.enter()  # Slicer may enter without exit (e.g. after a scene close)
    assert len(selector.connections(NODE_SIGNAL)) == ours == 2
    # The one connector still works both ways.
    volume = mrml.node_from_volume(scene, ct_image("oblique"), "CT")
    selector.setCurrentNode(volume)
    assert widget._parameterNode.inputVolume is volume


# ------------------------------------------------------------------ item 5: which volume is the input
def test_entering_with_only_an_rgb_volume_does_not_raise_and_picks_nothing(make_gui, scene):
    vector_volume(scene)
    _, widget = open_panel(make_gui())  # InputError escaped from enter() before
    assert widget._parameterNode.inputVolume is None
    assert not gui_button_enabled(widget) and widget.ui.statusLabel.text.startswith("Select an input volume")


def test_entering_picks_the_first_plain_scalar_volume(make_gui, scene):
    vector_volume(scene)
    mrml.node_from_volume(scene, ct_image("oblique"), "Labels", labelmap=True)
    ct = ct_node(scene)
    _, widget = open_panel(make_gui())
    assert widget._parameterNode.inputVolume is ct
    assert gui_button_enabled(widget), widget.ui.statusLabel.text


def test_selecting_an_rgb_volume_shows_why_it_cannot_run(make_gui, scene):
    rgb = vector_volume(scene)
    _, widget = open_panel(make_gui())
    widget.onInputChanged(rgb)
    assert not gui_button_enabled(widget)
    assert widget.ui.statusLabel.text == "Photo RGB is a vector (e.g. RGB colour) volume, not a CT or MR image: " \
                                         "select a scalar volume."


def gui_button_enabled(widget) -> bool:
    return bool(widget.ui.runButton.enabled)


# ------------------------------------------------------------------ item 2: install failures on the click
def test_a_failing_install_on_auto_contour_is_one_status_line_and_is_offered_again(make_gui, scene, monkeypatch):
    gui = make_gui()
    ct_node(scene)
    _, widget = open_panel(gui)
    pip_calls = []

    def failing_pip(requirements):  # slicer.util.pip_install as it fails (CalledProcessError)
        pip_calls.append(requirements)
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", requirements])

    monkeypatch.setattr(slicer.util, "pip_install", failing_pip)
    monkeypatch.setattr(dependencies, "is_importable", lambda module: module != "nrrd")
    monkeypatch.setattr(dependencies, "online", lambda: True)
    widget.onRunClicked()  # raised CalledProcessError before
    assert widget.ui.statusLabel.text == ("Installing pynrrd==1.1.1 failed (pip exit status 1; its output is in the "
                                          "Python console). Click Auto-contour to try again.")
    assert not widget.controller.running
    widget.onRunClicked()  # offered again (before: "Not run: missing ..." and never asked again)
    assert len(gui.questions) == 2 and pip_calls == ["pynrrd==1.1.1 --no-deps"] * 2


# ------------------------------------------------------------------ item 6: the self-test's dependencies
def self_test(module, monkeypatch):
    """A CervixAutoSegTest whose phantom run is not reached (it would contour for a minute)."""
    monkeypatch.setattr(module.CervixAutoSegLogic, "process", lambda *a, **k: pytest.fail("ran without packages"))
    test = module.CervixAutoSegTest()
    type(test).messages = []
    return test


def test_unattended_self_test_with_missing_packages_is_skipped_with_one_clear_line(make_gui, monkeypatch):
    gui = make_gui(testing=True)
    module = gui.load_module()
    monkeypatch.setattr(dependencies, "is_importable", lambda module: module not in ("torch", "skimage"))
    test = self_test(module, monkeypatch)
    with pytest.raises(__import__("unittest").SkipTest) as skipped:  # ctest: reported as skipped
        test.test_phantom_ct_on_cpu()
    assert str(skipped.value) == ("CervixAutoSeg self-test skipped: torch, scikit-image not installed; click "
                                  "Auto-contour once to install them.")
    test.runTest()  # "Reload and Test": shows the line, does not fail
    assert test.messages == [str(skipped.value)]
    assert gui.questions == []  # nothing asked, nothing downloaded


def test_interactive_self_test_installs_through_the_buttons_path(make_gui, monkeypatch):
    """Same InstallSession as the button: one question, the pinned --no-deps pip installs; a "no" skips."""
    gui = make_gui()
    module = gui.load_module()
    monkeypatch.setattr(dependencies, "is_importable", lambda module: module != "nrrd")
    monkeypatch.setattr(dependencies, "online", lambda: True)
    installed = []
    monkeypatch.setattr(slicer.util, "pip_install", installed.append)
    assert module.selfTestSkipReason() == ""
    assert installed == ["pynrrd==1.1.1 --no-deps"] and len(gui.questions) == 1
    assert module.installSession().installed  # the panel's session: the button will re-detect devices

    declined = make_gui()
    declined.answers = [False]
    module = declined.load_module()  # a reload: a new session that asks again
    test = self_test(module, monkeypatch)
    test.runTest()
    assert test.messages == [("CervixAutoSeg self-test skipped: Not run: missing pynrrd (restart Slicer or reload "
                              "the module to be asked again).")]


# ------------------------------------------------------------------ item 8: Export RTSTRUCT
class DicomDatabase:
    """slicer.dicomDatabase (ctkDICOMDatabase): isOpen and fileForInstance, over a real folder."""

    def __init__(self, storage: Path):
        self.isOpen, self.storage, self.files = True, storage, {}
        storage.mkdir(parents=True)

    def index(self, path: Path) -> None:
        import pydicom

        self.files[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = str(path)

    def fileForInstance(self, uid):
        return self.files.get(uid, "")


def fake_ctk(database_calls):
    """ctk.ctkDICOMIndexer: addFile(database, path, copyFile) copies into the database (CTK dd4caeae)."""
    import shutil
    import types

    class ctkDICOMIndexer:
        def addFile(self, database, path, copyFile=False):
            database_calls.append((path, copyFile))
            copy = database.storage / f"{len(database.files):04d}.dcm"
            shutil.copy2(path, copy)
            database.index(copy)

        def waitForImportFinished(self, msecTimeout=-1):
            database_calls.append("waited")

    module = types.ModuleType("ctk")
    module.ctkDICOMIndexer = ctkDICOMIndexer
    return module


def test_export_rtstruct_button_adds_to_the_dicom_database_not_the_series_folder(make_gui, scene, tmp_path,
                                                                                 monkeypatch):
    from rtstruct_oracle import write_series

    from CervixAutoSegLib.ct.family import CT_STRUCTURES
    from CervixAutoSegLib.dicom_series import read_dicom_series

    series = tmp_path / "dicom-database" / "dicom" / "1.2.3"
    files = write_series(series, 12, 10, np.array([[0.0, 0.0, 2.5 * k] for k in range(5)]), shuffle_seed=4)
    database = DicomDatabase(tmp_path / "dicom-database" / "storage")
    for path in files:
        database.index(path)
    calls = []
    monkeypatch.setitem(sys.modules, "ctk", fake_ctk(calls))
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    reference = read_dicom_series(series)
    volume = mrml.node_from_volume(scene, reference, "CT")
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(reference.meta["sop_instance_uids"]))
    labels = np.zeros(reference.shape, np.uint8)
    labels[1:4, 2:8, 2:7] = 2
    segmentation = mrml.add_segmentation(scene, volume, reference.with_array(labels), CT_STRUCTURES, model_id="ct")
    gui = make_gui()
    _, widget = open_panel(gui)
    widget._parameterNode.segmentation = segmentation

    before = sorted(p.name for p in series.iterdir())
    widget.onExportClicked()
    assert gui.errors == []
    assert widget.ui.statusLabel.text.startswith("RTSTRUCT with 4 ROIs added to the DICOM database")
    assert sorted(p.name for p in series.iterdir()) == before
    assert calls[-1] == "waited" and calls[0][1] is True  # copied into the database, then waited for
    assert len(database.files) == len(files) + 1


# ------------------------------------------------------------------ issue 13, item 4: a non-T2 MR series
def test_an_mr_series_that_is_not_t2_weighted_is_refused_until_the_box_is_ticked(make_gui, scene, tmp_path,
                                                                               monkeypatch):
    """The child only gets the voxels (NRRD): the panel reads the series' header through the DICOM database."""
    from test_controller import install_model
    from test_mr_inputs import SERIES, write_mr

    from CervixAutoSegLib import models
    from CervixAutoSegLib.dicom_series import read_dicom_series

    install_model(tmp_path / "Models", "mr-pocketnet", "mr")
    monkeypatch.setattr(models, "models_dir", lambda: tmp_path / "Models")
    database = DicomDatabase(tmp_path / "dicom-database")
    nodes = {}
    for description in ("t1_tse_tra", "t2_tse_sag"):
        folder = write_mr(tmp_path / description, description, **SERIES[description][0])
        for path in folder.iterdir():
            database.index(path)
        reference = read_dicom_series(folder)
        nodes[description] = mrml.node_from_volume(scene, reference, description)
        nodes[description].SetAttribute("DICOM.Modality", "MR")
        nodes[description].SetAttribute("DICOM.instanceUIDs", " ".join(reference.meta["sop_instance_uids"]))
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    _, widget = open_panel(make_gui())
    box = widget.ui.allowNonT2CheckBox
    deadline = time.monotonic() + 60
    while widget.controller.view.polling and time.monotonic() < deadline:  # the device probe disables the panel
        widget.onPoll()
        time.sleep(0.02)

    widget.onInputChanged(nodes["t1_tse_tra"])
    assert not gui_button_enabled(widget) and box.enabled and not box.checked
    assert widget.ui.statusLabel.text.startswith("t1_tse_tra is not T2-weighted: T1-weighted")
    box.checked = True
    box.emit("toggled(bool)", True)
    assert gui_button_enabled(widget), widget.ui.statusLabel.text
    box.checked = False
    box.emit("toggled(bool)", False)
    widget.onInputChanged(nodes["t2_tse_sag"])
    assert gui_button_enabled(widget), widget.ui.statusLabel.text


# ------------------------------------------------------------------ item 1: an older Slicer
def test_an_older_slicer_gets_one_line_when_the_module_loads_and_nothing_else(make_gui, caplog):
    gui = make_gui(version=(5, 8))
    caplog.set_level(logging.INFO)
    module = gui.load_module()
    parent = stubs.ModuleParent()
    module.CervixAutoSeg(parent)
    lines = [record for record in caplog.records if record.name == module.__name__]
    assert [(r.levelno, r.getMessage()) for r in lines] == [(logging.ERROR, (
        "CervixAutoSeg needs 3D Slicer 5.10 or later (Python 3.10+); this is Slicer 5.8 with Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}: install a newer 3D Slicer."))]
    assert parent.helpText == lines[0].getMessage()
    assert gui.app.connections("startupCompleted()") == []  # no terminology registration
    widget = module.CervixAutoSegWidget(parent)
    widget.setup()
    widget.enter()
    widget.exit()
    assert [w.text for w in widget.layout.widgets] == [lines[0].getMessage()]
    assert module.selfTestSkipReason() == lines[0].getMessage()


@pytest.mark.parametrize("slicer_version,python_version,refused", [
    ((5, 8), (3, 9), True), ((5, 10), (3, 9), True), ((5, 6), (3, 12), True), ((4, 13), (3, 12), True),
    ((5, 10), (3, 12), False), ((5, 11), (3, 12), False), ((6, 0), (3, 13), False)])
def test_the_version_rule(make_gui, slicer_version, python_version, refused):
    module = make_gui().load_module()
    assert bool(module.unsupportedReason(slicer_version, python_version)) == refused
    assert module.MINIMUM_SLICER_VERSION == dependencies.MINIMUM_SLICER
