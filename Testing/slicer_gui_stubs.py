"""Stand-ins for the parts of 3D Slicer that cannot run here, so that CervixAutoSeg.py itself is loaded and driven.

Faked: Qt widgets as PythonQt shows them (properties as attributes, signals connected by
signature), the scripted-module base classes, the parameter-node wrapper, dialogs and the
application object.  Real when available: the ``slicer`` package of slicer-core, so the
scene (``slicer.mrmlScene``) and its nodes are real MRML.  Each stand-in copies the
behaviour of Slicer's source where the module depends on it, and says which.

Stdlib only and Python 3.9 syntax: test_slicer_support.py also loads the module with these
stand-ins under a Python 3.9 interpreter (Slicer 5.8's), where nothing else is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
import unittest
from xml.etree import ElementTree

PARAMETER_NAME_PROPERTY = "SlicerParameterName"


class Patch:
    """The two calls of pytest's ``monkeypatch`` the stand-ins use, for a plain interpreter (no undo)."""

    def setattr(self, target, name, value, raising=True):
        setattr(target, name, value)

    def setitem(self, mapping, key, value):
        mapping[key] = value


# ------------------------------------------------------------------ widgets
class Widget:
    """A QObject/QWidget as PythonQt shows it: properties are attributes, signals are connected by signature."""

    DEFAULTS = types.MappingProxyType({"enabled": True, "visible": True, "text": "", "toolTip": "", "checked": False,
                                       "value": 0, "format": "%p%", "wordWrap": False})

    def __init__(self, class_name, name=""):
        self.__dict__.update(self.DEFAULTS)
        self.qtClass = class_name
        self.name = name
        self._dynamic = {}
        self._slots = {}
        self._blocked = False

    def property(self, name):
        """Dynamic properties (``stdset="0"`` in a .ui), as ``QObject::property``."""
        return self._dynamic.get(name)

    def setProperty(self, name, value):
        self._dynamic[name] = value

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def disconnect(self, signal, slot):
        self._slots.get(signal, []).remove(slot)

    def connections(self, signal):
        return list(self._slots.get(signal, []))

    def emit(self, signal, *args):
        if not self._blocked:
            for slot in list(self._slots.get(signal, [])):
                slot(*args)

    def blockSignals(self, block):
        previous, self._blocked = self._blocked, bool(block)
        return previous


class ComboBox(Widget):
    """QComboBox: items with user data; inserting into an empty box selects item 0 and signals it (as Qt does)."""

    def __init__(self, class_name, name=""):
        super().__init__(class_name, name)
        self._items = []
        self.currentIndex = -1

    @property
    def count(self):
        return len(self._items)

    def addItem(self, label, data=None):
        self._items.append((label, data))
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def clear(self):
        self._items = []
        self.setCurrentIndex(-1)

    def itemData(self, index):
        return self._items[index][1] if 0 <= index < len(self._items) else None

    def findData(self, data):
        return next((i for i, (_, value) in enumerate(self._items) if value == data), -1)

    def setCurrentIndex(self, index):
        changed = index != self.currentIndex
        self.currentIndex = index
        if changed:
            self.emit("currentIndexChanged(int)", index)


class NodeComboBox(Widget):
    """qMRMLNodeComboBox: signals currentNodeChanged(vtkMRMLNode*) only when the node changes."""

    def __init__(self, class_name, name=""):
        super().__init__(class_name, name)
        self._node = None
        self.scene = None

    def setMRMLScene(self, scene):
        self.scene = scene

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)


class MRMLWidget(Widget):
    """qMRMLWidget: setMRMLScene signals mrmlSceneChanged(vtkMRMLScene*) (the .ui wires it to the selectors)."""

    def setMRMLScene(self, scene):
        self.emit("mrmlSceneChanged(vtkMRMLScene*)", scene)


class Timer(Widget):
    """QTimer, started and stopped by the panel; tests fire ``timeout()`` by hand."""

    def __init__(self):
        super().__init__("QTimer")
        self._active = False

    def setInterval(self, interval):
        self.interval = interval

    def start(self):
        self._active = True

    def stop(self):
        self._active = False

    def isActive(self):
        return self._active


class TableWidgetItem:
    """QTableWidgetItem: a cell's text and tool tip."""

    def __init__(self, text=""):
        self._text, self._toolTip = text, ""

    def text(self):
        return self._text

    def setToolTip(self, text):
        self._toolTip = text

    def toolTip(self):
        return self._toolTip


class TableWidget(Widget):
    """QTableWidget: rows x columns of items; ``setRowCount`` drops items beyond the new count (as Qt does)."""

    def __init__(self, class_name, name=""):
        super().__init__(class_name, name)
        self.headerLabels, self.items, self.rowCount = [], {}, 0

    def setHorizontalHeaderLabels(self, labels):
        self.headerLabels = list(labels)

    def setRowCount(self, count):
        self.rowCount = count
        self.items = {key: item for key, item in self.items.items() if key[0] < count}

    def setItem(self, row, column, item):
        self.items[(row, column)] = item

    def item(self, row, column):
        return self.items.get((row, column))

    def resizeColumnsToContents(self):
        pass


WIDGET_CLASSES = {"QComboBox": ComboBox, "qMRMLNodeComboBox": NodeComboBox, "qMRMLWidget": MRMLWidget,
                  "QTableWidget": TableWidget}


def _property_value(element):
    value = element[0]
    if value.tag == "bool":
        return value.text == "true"
    if value.tag == "number":
        return int(value.text)
    if value.tag == "stringlist":
        return [item.text for item in value]
    return value.text


def load_ui(path):
    """The .ui file as stand-in widgets: (root widget, {name: widget}); its <connections> are wired."""
    tree = ElementTree.parse(path)
    widgets = {}
    for element in tree.iter("widget"):
        widget = WIDGET_CLASSES.get(element.get("class"), Widget)(element.get("class"), element.get("name"))
        for prop in element.findall("property"):
            if prop.get("stdset") == "0":
                widget.setProperty(prop.get("name"), _property_value(prop))
            elif prop.get("name") != "geometry":
                setattr(widget, prop.get("name"), _property_value(prop))
        widgets[widget.name] = widget
    for connection in tree.iter("connection"):
        receiver = widgets[connection.findtext("receiver")]
        slot = getattr(receiver, connection.findtext("slot").split("(")[0])
        widgets[connection.findtext("sender")].connect(connection.findtext("signal"), slot)
    root = widgets[tree.getroot().find("widget").get("name")]
    return root, widgets


# ------------------------------------------------------------------ scripted module base classes
class Layout:
    def __init__(self):
        self.widgets = []

    def addWidget(self, widget):
        self.widgets.append(widget)


class ModuleParent:
    """The qSlicerScriptedLoadableModule(Widget) a scripted module is given as ``parent``."""

    def __init__(self):
        self.title, self.categories, self.dependencies, self.contributors = "", [], [], []
        self.helpText = self.acknowledgementText = ""
        self.isEntered = True


def scripted_loadable_module(module_dir):
    """slicer.ScriptedLoadableModule (Base/Python/slicer/ScriptedLoadableModule.py, v5.10.0), GUI-free."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or ModuleParent()
            self.layout = Layout()

        def setup(self):
            pass

        def resourcePath(self, filename):
            return os.path.join(module_dir, "Resources", filename)

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[:-len("Logic")]

        def getParameterNode(self):
            """The module's singleton vtkMRMLScriptedModuleNode of the scene (created on first use)."""
            import slicer

            scene = slicer.mrmlScene
            for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
                node = scene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
                if node.GetAttribute("ModuleName") == self.moduleName:
                    return node
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetAttribute("ModuleName", self.moduleName)
            scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        messages = []  # noqa: RUF012 - what delayDisplay showed; tests reset it

        def delayDisplay(self, message, msec=1000):
            type(self).messages.append(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


# ------------------------------------------------------------------ parameter node wrapper
def parameter_node_wrapper_module(returns_tag):
    """slicer.parameterNodeWrapper reduced to what the panel uses (wrapper.py of v5.8.0 / v5.10.0).

    As there, every ``logic.getParameterNode()`` makes a new wrapper around the same MRML node,
    each wrapper keeps its own connector sets by tag, ``connectParametersToGui`` returns the tag
    and ``disconnectGui(tag)`` removes that set.  ``returns_tag=False`` copies Slicer 5.8's
    ``connectGui``, which builds the set but returns None.  A node-combobox connector writes the
    value into the widget and follows its currentNodeChanged(vtkMRMLNode*) signal.
    """
    module = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):
        fields = dict(cls.__annotations__)
        defaults = {name: getattr(cls, name) for name in fields if hasattr(cls, name)}

        class Wrapper:
            def __init__(self, node):
                object.__setattr__(self, "parameterNode", node)
                object.__setattr__(self, "_parameterGUIs", {})
                object.__setattr__(self, "_nextTag", 0)

            def __getattr__(self, name):
                node = self.parameterNode
                if name not in fields:
                    raise AttributeError(name)
                if name in defaults:
                    value = node.GetParameter(name)
                    return value if value else defaults[name]
                return node.GetNodeReference(name)

            def __setattr__(self, name, value):
                if name not in fields:
                    raise AttributeError(f"{cls.__name__} has no parameter {name}")
                if name in defaults:
                    self.parameterNode.SetParameter(name, value)
                else:
                    self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                for connectors in self._parameterGUIs.values():  # the GUI follows the parameter
                    for param, (widget, _, _) in connectors.items():
                        if param == name:
                            widget.setCurrentNode(value)

            def connectParametersToGui(self, mapping):
                tag = self._nextTag
                object.__setattr__(self, "_nextTag", tag + 1)
                connectors = {}
                for param, widget in mapping.items():
                    widget.setCurrentNode(getattr(self, param))

                    def follow(node, param=param):
                        self.parameterNode.SetNodeReferenceID(param, node.GetID() if node is not None else None)

                    widget.connect("currentNodeChanged(vtkMRMLNode*)", follow)
                    connectors[param] = (widget, "currentNodeChanged(vtkMRMLNode*)", follow)
                self._parameterGUIs[tag] = connectors
                return tag

            def connectGui(self, gui):
                mapping = {widget.property(PARAMETER_NAME_PROPERTY): widget for widget in vars(gui).values()
                           if widget.property(PARAMETER_NAME_PROPERTY)}
                tag = self.connectParametersToGui(mapping)
                return tag if returns_tag else None

            def disconnectGui(self, tag):
                for widget, signal, callback in self._parameterGUIs.pop(tag, {}).values():
                    widget.disconnect(signal, callback)

        Wrapper.__name__ = cls.__name__
        return Wrapper

    module.parameterNodeWrapper = parameterNodeWrapper
    return module


# ------------------------------------------------------------------ application and util
class Application(Widget):
    """slicer.app: the qSlicerApplication properties and calls the module uses."""

    def __init__(self, version, testing, temporary_path):
        super().__init__("qSlicerApplication")
        self.majorVersion, self.minorVersion = version
        self._testing = testing
        self.temporaryPath = temporary_path

    def testingEnabled(self):
        return self._testing

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass


class SlicerGui:
    """Installs the stand-ins into ``slicer_module`` (slicer-core's package, or a bare module) and loads CervixAutoSeg.py.

    Attributes a test reads or sets: ``answers`` (what confirmOkCancelDisplay returns, in
    order; then True), ``questions``, ``errors`` (exceptions tryWithErrorDisplay showed),
    ``widgets`` (the .ui's widgets once the panel is set up), ``panels`` (widgets :meth:`open_panel`
    made: call their ``cleanup()`` when done), ``app``.
    """

    def __init__(self, patch, slicer_module, module_file, *, version=(5, 10), testing=False,
                 wrapper_returns_tag=True, scene=None, temporary_path=""):
        self.patch, self.slicer, self.module_file = patch, slicer_module, module_file
        self.answers, self.questions, self.errors, self.widgets, self.panels = [], [], [], {}, []
        self.app = Application(version, testing, temporary_path)
        qt = types.ModuleType("qt")
        qt.QTimer = Timer
        qt.QLabel = lambda text="": self._label(text)
        qt.QTableWidgetItem = TableWidgetItem
        qt.Qt = types.SimpleNamespace(WaitCursor=3)
        patch.setitem(sys.modules, "qt", qt)
        patch.setitem(sys.modules, "slicer.ScriptedLoadableModule",
                      scripted_loadable_module(os.path.dirname(module_file)))
        patch.setitem(sys.modules, "slicer.parameterNodeWrapper", parameter_node_wrapper_module(wrapper_returns_tag))
        util = self._util()
        patch.setitem(sys.modules, "slicer.util", util)
        for name, value in (("app", self.app), ("util", util), ("mrmlScene", scene),
                            ("modules", types.SimpleNamespace()), ("selfTests", {})):
            patch.setattr(slicer_module, name, value, raising=False)
        for name in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
            if not hasattr(slicer_module, name):  # bare module (Python 3.9 run): annotations only
                patch.setattr(slicer_module, name, type(name, (), {}), raising=False)

    def _label(self, text):
        label = Widget("QLabel")
        label.text = text
        return label

    def _util(self):
        util = types.ModuleType("slicer.util")
        real = sys.modules.get("slicer.util") or getattr(self.slicer, "util", None)
        util.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")} if real else {})
        if not hasattr(util, "VTKObservationMixin"):
            class VTKObservationMixin:
                def __init__(self):
                    pass

                def addObserver(self, *args, **kwargs):
                    pass

                def removeObservers(self, *args, **kwargs):
                    pass

            util.VTKObservationMixin = VTKObservationMixin

        def loadUI(path):
            root, self.widgets = load_ui(path)
            return root

        def childWidgetVariables(root):
            ui = type("", (), {})()  # as Slicer's: an empty object with one attribute per named child
            for name, widget in self.widgets.items():
                if widget is not root:
                    setattr(ui, name, widget)
            return ui

        def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
            self.questions.append(text)
            if self.app.testingEnabled():  # as slicer.util: testing mode answers OK without asking
                return True
            return self.answers.pop(0) if self.answers else True

        @contextlib.contextmanager
        def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
            try:
                yield
            except Exception as error:  # noqa: BLE001 - as slicer.util: shown (here: recorded), not raised
                self.errors.append(error)

        def pip_install(requirements):
            raise AssertionError(f"pip_install({requirements!r}) called but the test did not expect it")

        for function in (loadUI, childWidgetVariables, confirmOkCancelDisplay, tryWithErrorDisplay, pip_install):
            setattr(util, function.__name__, function)
        util.delayDisplay = lambda message, *args, **kwargs: None
        return util

    def load_module(self, name="CervixAutoSeg"):
        """Execute CervixAutoSeg.py afresh (as Slicer's "Reload" does) and return it."""
        spec = importlib.util.spec_from_file_location(name, self.module_file)
        module = importlib.util.module_from_spec(spec)
        self.patch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    def open_panel(self, module):
        """Module object, then widget with setup() and enter(), as Slicer does when the module is opened."""
        parent = ModuleParent()
        module.CervixAutoSeg(parent)
        widget = module.CervixAutoSegWidget(parent)
        self.panels.append(widget)
        widget.setup()
        widget.enter()
        return widget
