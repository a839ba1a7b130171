"""CervixAutoSeg: auto-contouring of cervical-cancer radiotherapy structures in 3D Slicer.

This file is the thin Slicer shell.  The panel's decisions live in
``CervixAutoSegLib.controller``, scene work in ``CervixAutoSegLib.mrml``, the background
process in ``CervixAutoSegLib.worker`` and package installation in
``CervixAutoSegLib.dependencies``; all of them are tested without Slicer's GUI.
"""

# No "from __future__ import annotations" here: parameterNodeWrapper reads the class
# annotations as real types.
import logging
import os
import sys
import tempfile

import qt
import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# In the source tree the package sits next to this module's folder; in an installed
# extension both are in the same qt-scripted-modules folder.
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_REPOSITORY, "CervixAutoSegLib")) and _REPOSITORY not in sys.path:
    sys.path.append(_REPOSITORY)

POLL_INTERVAL_MS = 200
"""How often the panel reads the background job's progress."""
MINIMUM_SLICER_VERSION = (5, 10)
"""Oldest supported Slicer (CervixAutoSegLib.dependencies.MINIMUM_SLICER; not imported from there:
the check must run before anything of the package is imported)."""
MINIMUM_PYTHON_VERSION = (3, 10)
"""The package needs Python 3.10+ (Slicer 5.8 runs 3.9; Slicer 5.10 runs 3.12)."""
PARAMETER_NAME_PROPERTY = "SlicerParameterName"
"""Dynamic property naming the parameter-node field a .ui widget shows."""
QA_VERDICT_STYLES = {"check": "font-weight: bold; color: #b36b00", "implausible": "font-weight: bold; color: #d50000"}
"""Style of the QA warning line per verdict (amber: check, red: implausible)."""

# This file is read by whatever Python the running Slicer has, so until the check below has
# passed it must stay Python 3.9 syntax and import nothing from CervixAutoSegLib.


def unsupportedReason(slicerVersion, pythonVersion):
    """One line saying why this Slicer cannot run the module, or '' when it can.

    ``slicerVersion`` is (major, minor) of 3D Slicer, ``pythonVersion`` (major, minor) of its Python.
    """
    if tuple(slicerVersion) >= MINIMUM_SLICER_VERSION and tuple(pythonVersion) >= MINIMUM_PYTHON_VERSION:
        return ""
    return ("CervixAutoSeg needs 3D Slicer {}.{} or later (Python {}.{}+); this is Slicer {}.{} with Python {}.{}: "
            "install a newer 3D Slicer.".format(*MINIMUM_SLICER_VERSION, *MINIMUM_PYTHON_VERSION,
                                                *slicerVersion[:2], *pythonVersion[:2]))


def runningUnsupportedReason():
    """:func:`unsupportedReason` for the running Slicer."""
    return unsupportedReason((slicer.app.majorVersion, slicer.app.minorVersion), sys.version_info[:2])


class CervixAutoSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CervixAutoSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Terminologies"]
        self.parent.contributors = ["CervixAutoSeg team"]
        self.parent.helpText = (
            "Auto-contours bladder, rectum, CTVn and CTVp on planning CT (ResAU-Net) and the "
            "uterus/cervix/vagina and GTVp on T2-weighted MRI (PocketNet), then exports DICOM RTSTRUCT. "
            "The bundled models are trained on synthetic phantoms: NOT FOR CLINICAL USE."
        )
        self.parent.acknowledgementText = (
            "Methods: ResAU-Net for cervical-cancer CT contouring; PocketNet for cervical MRI. "
            "Built on 3D Slicer, PyTorch and the Slicer PyTorch extension."
        )
        reason = runningUnsupportedReason()
        if reason:
            # The one line an older Slicer gets; nothing of the package is imported or registered.
            logging.getLogger(__name__).error(reason)
            self.parent.helpText = reason
            return
        slicer.app.connect("startupCompleted()", registerTerminology)


_installSession = None


def installSession():
    """The one dependency InstallSession of this Slicer session.

    The Auto-contour button and the self-test both go through it, so packages are asked for
    once and installed the same way (reloading the module starts a new session).
    """
    global _installSession
    if _installSession is None:
        from CervixAutoSegLib import dependencies

        _installSession = dependencies.InstallSession(ask=slicer.util.confirmOkCancelDisplay)
    return _installSession


def addToDicomDatabase(path) -> None:
    """Import one DICOM file into Slicer's DICOM database as Slicer's DICOM export does (a copy)."""
    import ctk

    from CervixAutoSegLib.errors import InputError

    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not database.isOpen:
        raise InputError("no DICOM database is open: open the DICOM module once and try again")
    indexer = ctk.ctkDICOMIndexer()
    indexer.addFile(database, str(path), True)  # copy: the caller removes its temporary file
    indexer.waitForImportFinished()


def connectParameterGui(parameterNode, ui):
    """Connect the widgets that name a parameter (SlicerParameterName); return the tag that disconnects them.

    Not ``connectGui``: Slicer 5.8's returns None instead of its tag, so ``disconnectGui`` then
    disconnects nothing and every ``enter()`` would add one more set of connectors.
    ``connectParametersToGui`` (which ``connectGui`` calls) returns the tag in every version.
    """
    mapping = {widget.property(PARAMETER_NAME_PROPERTY): widget for widget in vars(ui).values()
               if hasattr(widget, "property") and widget.property(PARAMETER_NAME_PROPERTY)}
    tag = parameterNode.connectParametersToGui(mapping)
    if tag is None:
        raise RuntimeError("the parameter node wrapper returned no GUI tag; the panel cannot disconnect it")
    return tag


def dicomWeighting(volumeNode):
    """The T2-weighting verdict of the DICOM series ``volumeNode`` was loaded from, or None.

    None when the node did not come from Slicer's DICOM database (a NIfTI, a phantom) or is not
    MR; the background job only gets the voxels, so the header is read here (one file).
    """
    from CervixAutoSegLib import mrml
    from CervixAutoSegLib.dicom_series import find_series
    from CervixAutoSegLib.errors import InputError

    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not getattr(database, "isOpen", True):
        return None
    try:
        files = mrml.dicom_files_of(volumeNode, database.fileForInstance)
    except InputError:
        return None
    series = find_series(files[:1])
    return series[0].weighting if series else None


def registerTerminology() -> None:
    """Make Slicer's terminology selector know our codes (Resources/CervixAutoSeg.term.json)."""
    from CervixAutoSegLib import mrml
    from CervixAutoSegLib.errors import InputError
    from CervixAutoSegLib.models import resources_dir

    path = resources_dir() / "CervixAutoSeg.term.json"
    try:
        mrml.register_terminology(slicer.modules.terminologies.logic(), path)
    except (InputError, AttributeError, OSError) as error:  # must not stop Slicer from starting
        logging.getLogger(__name__).warning("CervixAutoSeg: terminology not registered: %s", error)


@parameterNodeWrapper
class CervixAutoSegParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    segmentation: slicer.vtkMRMLSegmentationNode
    model: str = "auto"
    device: str = "auto"


class CervixAutoSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui widgets to a :class:`CervixAutoSegLib.controller.AutoContourController`."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.controller = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runVolume = None
        self._qaRows = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

    # ------------------------------------------------------------- set-up
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        reason = runningUnsupportedReason()
        if reason:  # the panel is just that line; nothing of the package is imported
            label = qt.QLabel(reason)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        from CervixAutoSegLib.controller import QA_COLUMNS, AutoContourController

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CervixAutoSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CervixAutoSegLogic()
        # Devices are probed in a background process: importing torch must not freeze Slicer.
        self.controller = AutoContourController(apply_result=self.applyResult)

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.runButton.connect("clicked(bool)", self.onRunClicked)
        self.ui.exportButton.connect("clicked(bool)", self.onExportClicked)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModels)
        self.ui.flipTTACheckBox.connect("toggled(bool)", self.onFlipTTAToggled)
        self.ui.allowNonT2CheckBox.connect("toggled(bool)", self.onAllowNonT2Toggled)
        self.ui.qaTable.setHorizontalHeaderLabels(list(QA_COLUMNS))
        self.ui.qaTable.connect("cellClicked(int,int)", self.onQARowClicked)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        registerTerminology()  # also when the module is (re)loaded after start-up
        self.initializeParameterNode()
        self.render()

    def cleanup(self):
        self.removeObservers()
        if self.controller is not None and self.controller.running:
            self.controller.cancel()
        self._timer.stop()

    def enter(self):
        if self.controller is not None:  # None: this Slicer is refused (setup showed why)
            self.initializeParameterNode()

    def exit(self):
        self.disconnectParameterGui()

    def disconnectParameterGui(self):
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        if self.controller.running:
            self.render(self.controller.cancel())  # its input volume is going away
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        from CervixAutoSegLib.mrml import first_input_volume

        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            # Plain scalar volumes only: GetFirstNodeByClass would also return label maps and
            # vector (RGB), DWI or tensor volumes, all subclasses of vtkMRMLScalarVolumeNode.
            first = first_input_volume(slicer.mrmlScene)
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode):
        self.disconnectParameterGui()
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectParameterGui(self._parameterNode, self.ui)
            self.controller.set_model(self._parameterNode.model)
            self.controller.set_device(self._parameterNode.device)
            self.onInputChanged(self._parameterNode.inputVolume)
            self.onSegmentationChanged(self._parameterNode.segmentation)

    # ------------------------------------------------------------- events
    def onInputChanged(self, node):
        from CervixAutoSegLib.mrml import VolumeNodeInput

        runInput = VolumeNodeInput(node) if node else None
        if runInput is not None:
            runInput.weighting = dicomWeighting(node)  # the controller refuses a non-T2w MR series
        self.render(self.controller.set_input(runInput))

    def onSegmentationChanged(self, node):
        self.render(self.controller.set_segmentation(node is not None))

    def onModelChanged(self, index):
        value = self.ui.modelComboBox.itemData(index)
        if value is not None and self._parameterNode:
            self._parameterNode.model = value
            self.render(self.controller.set_model(value))

    def onDeviceChanged(self, index):
        value = self.ui.deviceComboBox.itemData(index)
        if value is not None and self._parameterNode:
            self._parameterNode.device = value
            self.render(self.controller.set_device(value))

    def onFlipTTAToggled(self, checked):
        self.render(self.controller.set_flip_tta(checked))

    def onAllowNonT2Toggled(self, checked):
        self.render(self.controller.set_allow_non_t2(checked))

    def onRefreshModels(self):
        self.render(self.controller.refresh())

    def onRunClicked(self):
        if not self.controller.running:
            if not self.ensureDependencies():
                return
            self._runVolume = self._parameterNode.inputVolume
        self.render(self.controller.run_clicked())

    def onPoll(self):
        self.render(self.controller.poll())

    def onQARowClicked(self, row, column):
        """Show the flagged slice: every slice view jumps to the structure's centre on it."""
        position = self.controller.qa_row_position(row)
        if position is not None:
            slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *position)

    def onExportClicked(self):
        from CervixAutoSegLib import mrml

        node = self._parameterNode.segmentation if self._parameterNode else None
        database = getattr(slicer, "dicomDatabase", None)
        fileForInstance = database.fileForInstance if database is not None else (lambda uid: "")
        with slicer.util.tryWithErrorDisplay("RTSTRUCT export failed.", waitCursor=True):
            self.render(self.controller.export_clicked(lambda: mrml.export_to_dicom_database(
                node, fileForInstance, addToDicomDatabase, work_dir=slicer.app.temporaryPath)))

    def applyResult(self, outDir) -> str:
        """Called by the controller when the background run succeeded."""
        from CervixAutoSegLib import mrml

        node = self.logic.applyResult(self._runVolume, outDir)
        self._parameterNode.segmentation = node
        return mrml.summary(node)

    def ensureDependencies(self) -> bool:
        """Ask once per session, install what is missing; False (with a status line) when the run cannot start."""
        session = installSession()
        ready, message = session.ready()  # never raises: a failed install is a one-line message
        if not ready:
            self.ui.statusLabel.text = message
            return False
        if session.installed:
            session.installed = False
            self.render(self.controller.refresh())  # torch is new: detect the devices again
        return True

    # ------------------------------------------------------------- render
    def render(self, view=None):
        """Copy the controller's ViewState into the widgets (no decisions here)."""
        view = view or self.controller.view
        self._fillCombo(self.ui.modelComboBox, view.models, view.model)
        self._fillCombo(self.ui.deviceComboBox, view.devices, view.device)
        self.ui.deviceNoteLabel.text = view.device_note
        self.ui.runButton.text = view.run_text
        self.ui.runButton.enabled = view.run_enabled
        self.ui.runButton.toolTip = view.run_tooltip
        self.ui.progressBar.visible = view.progress_visible
        self.ui.progressBar.value = view.progress
        self.ui.progressBar.format = f"{view.progress_text} (%p%)" if view.progress_text else "%p%"
        self.ui.statusLabel.text = view.status
        self.ui.exportButton.enabled = view.export_enabled
        if self.ui.flipTTACheckBox.checked != view.flip_tta:
            wasBlocked = self.ui.flipTTACheckBox.blockSignals(True)
            self.ui.flipTTACheckBox.checked = view.flip_tta
            self.ui.flipTTACheckBox.blockSignals(wasBlocked)
        if self.ui.allowNonT2CheckBox.checked != view.allow_non_t2:
            wasBlocked = self.ui.allowNonT2CheckBox.blockSignals(True)
            self.ui.allowNonT2CheckBox.checked = view.allow_non_t2
            self.ui.allowNonT2CheckBox.blockSignals(wasBlocked)
        self.ui.qaWarningLabel.text = view.qa_warning
        self.ui.qaWarningLabel.visible = bool(view.qa_warning)
        self.ui.qaWarningLabel.styleSheet = QA_VERDICT_STYLES.get(view.qa_verdict, "")
        if view.qa_summary:
            self.ui.qaSummaryLabel.text = view.qa_summary
        self._fillQATable(view.qa_rows)
        for widget in (self.ui.inputVolumeSelector, self.ui.modelComboBox, self.ui.deviceComboBox,
                       self.ui.flipTTACheckBox, self.ui.allowNonT2CheckBox):
            widget.enabled = not view.polling
        if view.polling and not self._timer.isActive():
            self._timer.start()
        elif not view.polling and self._timer.isActive():
            self._timer.stop()

    def _fillQATable(self, rows):
        """One table row per flagged slice (refilled only when the rows change)."""
        if rows == self._qaRows:
            return
        self._qaRows = list(rows)
        table = self.ui.qaTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            for column, text in enumerate(row.cells()):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(row.reasons)
                table.setItem(index, column, item)
        table.resizeColumnsToContents()

    @staticmethod
    def _fillCombo(combo, choices, current):
        values = [choice.value for choice in choices]
        if [combo.itemData(i) for i in range(combo.count)] != values:
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for choice in choices:
                combo.addItem(choice.label, choice.value)
            combo.blockSignals(wasBlocked)
        index = combo.findData(current)
        if index >= 0 and combo.currentIndex != index:
            wasBlocked = combo.blockSignals(True)
            combo.setCurrentIndex(index)
            combo.blockSignals(wasBlocked)


class CervixAutoSegLogic(ScriptedLoadableModuleLogic):
    """Console entry point (no GUI needed)::

        logic = slicer.util.getModuleLogic("CervixAutoSeg")
        segmentation = logic.process(slicer.util.getNode("CT"), device="cpu")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CervixAutoSegParameterNode(super().getParameterNode())

    def process(self, volumeNode, model: str = "auto", device: str = "auto", outDir=None, allowNonT2=False):
        """Contour ``volumeNode`` in this process (blocks); returns the segmentation node.
        ``allowNonT2``: contour an MR DICOM series whose header says it is not T2-weighted."""
        from CervixAutoSegLib.mrml import AutoContourLogic

        with tempfile.TemporaryDirectory(prefix="CervixAutoSeg-") as temporary:
            return AutoContourLogic(slicer.mrmlScene).run(
                volumeNode, outDir or os.path.join(temporary, "out"), model=model, device=device,
                allow_non_t2=allowNonT2)

    def applyResult(self, volumeNode, outDir):
        from CervixAutoSegLib.mrml import AutoContourLogic

        return AutoContourLogic(slicer.mrmlScene).apply_result(volumeNode, outDir)


def selfTestSkipReason():
    """'' when the self-test can run, else the one line saying why it is skipped.

    Missing packages are installed through the Auto-contour button's own path
    (:func:`installSession`: the same question, PyTorch extension and pinned pip installs).
    Unattended (testing mode, e.g. ctest) nothing is installed and the test is skipped:
    there ``confirmOkCancelDisplay`` answers "OK" by itself, which would start a multi-GB
    download nobody asked for.
    """
    reason = runningUnsupportedReason()
    if reason:
        return reason
    from CervixAutoSegLib import dependencies

    if slicer.app.testingEnabled():
        install_plan = dependencies.plan()
        if install_plan.needed:
            return "CervixAutoSeg self-test skipped: " + dependencies.not_installed_message(install_plan)
    ready, message = installSession().ready()
    return "" if ready else "CervixAutoSeg self-test skipped: " + message


class CervixAutoSegTest(ScriptedLoadableModuleTest):
    """Slicer self-test: a phantom CT and a phantom T2w MR, the logic on CPU, the segments checked."""

    MIN_DICE = 0.6
    """The bundled demo models must find every phantom structure at least this well..."""
    MIN_DICE_OF = {"GTVp": 0.2}
    """... but the MR tumour: weights 0.1 reached 0.26 on this phantom; the tumour stage is still
    under-trained (issue 13)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        import unittest

        for test in (self.test_phantom_ct_on_cpu, self.test_phantom_mr_on_cpu):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skipped:
                # "Reload and Test" calls runTest outside a unittest runner: show why, do not fail.
                self.delayDisplay(str(skipped))
                return

    def test_phantom_ct_on_cpu(self):
        from CervixAutoSegLib.phantom import make_ct_phantom

        self._contourPhantom("ct", lambda: make_ct_phantom(0))

    def test_phantom_mr_on_cpu(self):
        from CervixAutoSegLib.phantom import make_mr_phantom

        self._contourPhantom("mr", lambda: make_mr_phantom(0))

    def _contourPhantom(self, family, makePhantom):
        """Phantom of ``family`` → volume node → logic on CPU → every segment named, coloured and in place."""
        reason = selfTestSkipReason()
        if reason:
            self.skipTest(reason)
        import numpy as np

        from CervixAutoSegLib import mrml
        from CervixAutoSegLib.families import get_family

        structures = get_family(family).structures
        regions = mrml.containment_for(structures)  # MR: the organ segment also covers the tumour
        self.delayDisplay(f"Making a phantom {family.upper()}")
        phantom = makePhantom()  # .image (Volume) and .labels (truth on its grid)
        image, truth = phantom.image, phantom.labels
        volumeNode = mrml.node_from_volume(slicer.mrmlScene, image, f"Phantom {family.upper()}")

        self.delayDisplay("Auto-contouring on CPU")
        segmentationNode = CervixAutoSegLogic().process(volumeNode, model=family, device="cpu")

        segmentation = segmentationNode.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, [s.name for s in structures])
        labels, _, _ = mrml.labels_from_segmentation(segmentationNode, image)
        for structure in structures:
            segment = segmentation.GetSegment(structure.name)
            self.assertTrue(np.allclose(segment.GetColor(), structure.color_float))
            values = regions.get(structure.value, (structure.value,))
            found, expected = np.isin(labels.array, values), np.isin(np.asarray(truth.array), values)
            dice = 2.0 * np.sum(found & expected) / max(1, found.sum() + expected.sum())
            minimum = self.MIN_DICE_OF.get(structure.name, self.MIN_DICE)
            self.assertGreater(dice, minimum, f"{structure.name}: Dice {dice:.2f}")
        self.delayDisplay("Test passed")
