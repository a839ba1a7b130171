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
        slicer.app.connect("startupCompleted()", registerTerminology)


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
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

    # ------------------------------------------------------------- set-up
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from CervixAutoSegLib import dependencies
        from CervixAutoSegLib.controller import AutoContourController

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CervixAutoSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CervixAutoSegLogic()
        self.installSession = dependencies.InstallSession(ask=slicer.util.confirmOkCancelDisplay)
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
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
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
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.controller.set_model(self._parameterNode.model)
            self.controller.set_device(self._parameterNode.device)
            self.onInputChanged(self._parameterNode.inputVolume)
            self.onSegmentationChanged(self._parameterNode.segmentation)

    # ------------------------------------------------------------- events
    def onInputChanged(self, node):
        from CervixAutoSegLib.mrml import VolumeNodeInput

        self.render(self.controller.set_input(VolumeNodeInput(node) if node else None))

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

    def onExportClicked(self):
        from CervixAutoSegLib import mrml

        node = self._parameterNode.segmentation if self._parameterNode else None
        with slicer.util.tryWithErrorDisplay("RTSTRUCT export failed.", waitCursor=True):
            self.render(self.controller.export_clicked(
                lambda: mrml.export_next_to_source(node, slicer.dicomDatabase.fileForInstance)))

    def applyResult(self, outDir) -> str:
        """Called by the controller when the background run succeeded."""
        from CervixAutoSegLib import mrml

        node = self.logic.applyResult(self._runVolume, outDir)
        self._parameterNode.segmentation = node
        return mrml.summary(node)

    def ensureDependencies(self) -> bool:
        """Ask once per session, install what is missing; False (with a status line) when the run cannot start."""
        ready, message = self.installSession.ready()
        if not ready:
            self.ui.statusLabel.text = message
            return False
        if self.installSession.installed:
            self.installSession.installed = False
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
        for widget in (self.ui.inputVolumeSelector, self.ui.modelComboBox, self.ui.deviceComboBox,
                       self.ui.flipTTACheckBox):
            widget.enabled = not view.polling
        if view.polling and not self._timer.isActive():
            self._timer.start()
        elif not view.polling and self._timer.isActive():
            self._timer.stop()

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

    def process(self, volumeNode, model: str = "auto", device: str = "auto", outDir=None):
        """Contour ``volumeNode`` in this process (blocks); returns the segmentation node."""
        from CervixAutoSegLib.mrml import AutoContourLogic

        with tempfile.TemporaryDirectory(prefix="CervixAutoSeg-") as temporary:
            return AutoContourLogic(slicer.mrmlScene).run(
                volumeNode, outDir or os.path.join(temporary, "out"), model=model, device=device)

    def applyResult(self, volumeNode, outDir):
        from CervixAutoSegLib.mrml import AutoContourLogic

        return AutoContourLogic(slicer.mrmlScene).apply_result(volumeNode, outDir)


class CervixAutoSegTest(ScriptedLoadableModuleTest):
    """Slicer self-test: a phantom CT, the logic on CPU, the segments checked."""

    MIN_DICE = 0.6
    """The bundled demo model must find every phantom structure at least this well."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_ct_on_cpu()

    def test_phantom_ct_on_cpu(self):
        import numpy as np

        from CervixAutoSegLib import mrml
        from CervixAutoSegLib.phantom import make_ct_phantom
        from CervixAutoSegLib.ct.family import CT_STRUCTURES

        self.delayDisplay("Making a phantom CT")
        phantom = make_ct_phantom(0)  # .image (CT Volume) and .labels (truth on its grid)
        image, truth = phantom.image, phantom.labels
        volumeNode = mrml.node_from_volume(slicer.mrmlScene, image, "Phantom CT")

        self.delayDisplay("Auto-contouring on CPU")
        segmentationNode = CervixAutoSegLogic().process(volumeNode, model="ct", device="cpu")

        segmentation = segmentationNode.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, [s.name for s in CT_STRUCTURES])
        labels, _, _ = mrml.labels_from_segmentation(segmentationNode, image)
        for structure in CT_STRUCTURES:
            segment = segmentation.GetSegment(structure.name)
            self.assertTrue(np.allclose(segment.GetColor(), structure.color_float))
            found, expected = labels.array == structure.value, np.asarray(truth.array) == structure.value
            dice = 2.0 * np.sum(found & expected) / max(1, found.sum() + expected.sum())
            self.assertGreater(dice, self.MIN_DICE, f"{structure.name}: Dice {dice:.2f}")
        self.delayDisplay("Test passed")

