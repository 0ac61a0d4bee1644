"""Run the Slicer module file against Slicer's own Python sources, without the Slicer application.

What is real and what is a double:

* **Real:** Slicer's ``parameterNodeWrapper``, ``ScriptedLoadableModule``, ``util``, ``i18n`` (and
  ``packaging`` from 5.12) of one release, loaded from ``../shared/slicer-reference/<release>`` as
  ``slicer.parameterNodeWrapper`` etc.; the MRML classes and scene (``slicer-core``); VTK; the engine
  subprocess that the module starts.
* **Doubles:** the ``qt`` and ``ctk`` modules and Slicer's Qt widget classes (``qMRMLNodeComboBox``,
  ``qMRMLWidget``, ...), ``slicer.app`` and ``slicer.modules``. Each widget class of the ``.ui`` file is a
  class of its own (Slicer's connectors compare ``type(widget)``), and unknown names become distinct empty
  widget classes on first use, so that a connector's ``canRepresent`` can name them.

:func:`slicer_environment` puts all of this into ``sys.modules`` for the duration of a ``with`` block and
restores what was there before; the module file and the Lib modules that import ``slicer``/``qt`` (the logic and
self-test bodies) are imported afresh in each block, and the panels built in it are torn down (``exit``,
``cleanup``) when it ends, as Slicer does when it quits. The ``.ui`` loader (``qt.QUiLoader``) builds the widget
tree from the real ``.ui`` file with those classes, sets its properties (``SlicerParameterName`` included) and
makes its signal/slot connections.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import sys
import tempfile
import types
import weakref
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MRtoCTSynthesis"
MODULE_PY = MODULE_DIR / "MRtoCTSynthesis.py"
REFERENCE_DIR = REPO.parent / "shared" / "slicer-reference"
RELEASES = ("5.6.2", "5.8.1", "5.10.0", "5.12.3")


def reference_sources(release: str) -> Path | None:
    """``<reference>/<release>/Base/Python/slicer``, or None when it is not there (a user's clone)."""
    path = REFERENCE_DIR / release / "Base" / "Python" / "slicer"
    return path if (path / "parameterNodeWrapper" / "__init__.py").is_file() else None


# ================================================================================================ signals
class Signal:
    """A bound Qt signal: ``connect``/``disconnect``/``emit``. Like PythonQt, a slot that takes fewer
    arguments than the signal sends gets the first ones only. Nothing is sent while the owner's signals are
    blocked (``blockSignals``)."""

    def __init__(self, owner=None):
        self._owner = weakref.ref(owner) if owner is not None else (lambda: None)
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)
        return True

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
            return
        self._slots.remove(slot)  # Qt raises when the slot was not connected; so does this

    def emit(self, *args):
        owner = self._owner()
        if owner is not None and getattr(owner, "_signalsBlocked", False):
            return
        for slot in list(self._slots):
            _call(slot, args)

    @property
    def receivers(self):
        return len(self._slots)


def _call(slot, args):
    try:
        sig = inspect.signature(slot)
    except (TypeError, ValueError):
        return slot(*args)
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return slot(*args)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return slot(*args[:len(positional)])


class signal:  # noqa: N801 - a descriptor named like Qt's Signal declaration
    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        store = obj.__dict__.setdefault("_signals", {})
        if self.name not in store:
            store[self.name] = Signal(obj)
        return store[self.name]


# ================================================================================================ qt double
class QObject:
    destroyed = signal()

    def __init__(self, parent=None):
        self._children = []
        self._props = {}
        self._signalsBlocked = False
        self.name = ""
        self.objectName = ""
        self._parent = None
        if parent is not None:
            self.setParent(parent)

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def findChildren(self, cls=None, name=None):
        out = []
        for child in self._children:
            if (cls is None or isinstance(child, cls)) and (name is None or child.name == name):
                out.append(child)
            out += child.findChildren(cls, name)
        return out

    def property(self, name):
        if name in self._props:
            return self._props[name]
        return getattr(self, name, None) if not name.startswith("_") else None

    def setProperty(self, name, value):
        self._props[name] = value
        return False

    def blockSignals(self, block):
        was = self._signalsBlocked
        self._signalsBlocked = bool(block)
        return was

    def signalsBlocked(self):
        return self._signalsBlocked

    def className(self):
        return type(self).__name__

    def connect(self, *args):
        """PythonQt's old-style ``obj.connect("clicked(bool)", slot)``."""
        if len(args) == 2 and isinstance(args[0], str):
            getattr(self, args[0].split("(")[0]).connect(args[1])
            return True
        if len(args) == 4:  # qt.QObject.connect(sender, "signal()", receiver, "slot()")
            sender, sig, receiver, slot = args
            getattr(sender, sig.split("(")[0]).connect(getattr(receiver, slot.split("(")[0]))
            return True
        raise TypeError(f"unsupported connect{args}")

    def disconnect(self, *args):
        if len(args) == 2 and isinstance(args[0], str):
            with contextlib.suppress(ValueError):
                getattr(self, args[0].split("(")[0]).disconnect(args[1])
            return True
        return False

    def deleteLater(self):
        pass


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self._layout = None

    def isWidgetType(self):
        return True

    def setLayout(self, layout):
        self._layout = layout
        layout._owner = self

    def layout(self):
        return self._layout

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setVisible(self, value):
        self.visible = bool(value)

    def isVisible(self):
        return self.visible

    def setEnabled(self, value):
        self.enabled = bool(value)

    def isEnabled(self):
        return self.enabled

    def setToolTip(self, text):
        self.toolTip = text


class QLayout(QObject):
    def __init__(self, parent=None):
        super().__init__(None)
        self._owner = parent if isinstance(parent, QWidget) else None
        if self._owner is not None:
            self._owner._layout = self

    def addWidget(self, widget, *args):
        if self._owner is not None:
            widget.setParent(self._owner)

    def addRow(self, *args):
        for a in args:
            if isinstance(a, QWidget):
                self.addWidget(a)

    def addLayout(self, layout, *args):
        pass

    def addStretch(self, *args):
        pass


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QAbstractButton(QWidget):
    clicked = signal()
    toggled = signal()
    pressed = signal()
    released = signal()

    def __init__(self, text="", parent=None):
        if isinstance(text, QObject):
            text, parent = "", text
        super().__init__(parent)
        self.text = text
        self.checkable = False
        self._checked = False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        value = bool(value)
        if value != self._checked:
            self._checked = value
            self.toggled.emit(value)
            self._changedState(value)

    def _changedState(self, value):
        pass

    def setChecked(self, value):
        self.checked = value

    def isChecked(self):
        return self.checked

    def setText(self, text):
        self.text = text

    def click(self):
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(self.checked)


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QRadioButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    stateChanged = signal()

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.checkable = True

    def _changedState(self, value):
        self.stateChanged.emit(2 if value else 0)


class QLabel(QWidget):
    linkActivated = signal()

    def __init__(self, text="", parent=None):
        if isinstance(text, QObject):
            text, parent = "", text
        super().__init__(parent)
        self.text = text
        self.wordWrap = False

    def setText(self, text):
        self.text = text


class QLineEdit(QWidget):
    textChanged = signal()
    editingFinished = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""

    @property
    def text(self):
        return self._text

    @text.setter
    def text(self, value):
        if value != self._text:
            self._text = value
            self.textChanged.emit(value)


class QPlainTextEdit(QWidget):
    textChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._lines = []
        self.readOnly = False
        self.maximumBlockCount = 0

    def appendPlainText(self, text):
        self._lines.append(str(text))
        if self.maximumBlockCount and len(self._lines) > self.maximumBlockCount:
            del self._lines[:len(self._lines) - self.maximumBlockCount]
        self.textChanged.emit()

    def clear(self):
        self._lines = []
        self.textChanged.emit()

    @property
    def plainText(self):
        return "\n".join(self._lines)

    @plainText.setter
    def plainText(self, value):
        self._lines = str(value).split("\n") if value else []

    def toPlainText(self):
        return self.plainText


class QTextEdit(QPlainTextEdit):
    pass


class QProgressBar(QWidget):
    valueChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum, self.value = 0, 100, 0
        self.format = "%p%"
        self.textVisible = True

    def setRange(self, lo, hi):
        self.minimum, self.maximum = lo, hi

    def setValue(self, value):
        self.value = value


class _SpinBase(QWidget):
    valueChanged = signal()
    editingFinished = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._minimum, self._maximum = 0, 99
        self._value = 0
        self.singleStep = 1
        self.specialValueText = ""
        self.suffix = ""
        self.prefix = ""
        self.decimals = 2

    def _coerce(self, value):
        return value

    @property
    def minimum(self):
        return self._minimum

    @minimum.setter
    def minimum(self, value):
        self._minimum = self._coerce(value)
        self._maximum = max(self._maximum, self._minimum)
        self._set(self._value)

    @property
    def maximum(self):
        return self._maximum

    @maximum.setter
    def maximum(self, value):
        self._maximum = self._coerce(value)
        self._minimum = min(self._minimum, self._maximum)
        self._set(self._value)

    def setMinimum(self, value):
        self.minimum = value

    def setMaximum(self, value):
        self.maximum = value

    def setRange(self, lo, hi):
        self._minimum, self._maximum = self._coerce(lo), self._coerce(hi)
        self._set(self._value)

    def _set(self, value):
        value = self._coerce(min(max(value, self._minimum), self._maximum))
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        self._set(value)

    def setValue(self, value):
        self._set(value)


class QSpinBox(_SpinBase):
    def _coerce(self, value):
        return int(value)


class QDoubleSpinBox(_SpinBase):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._maximum = 99.99

    def _coerce(self, value):
        return float(value)


class QSlider(QSpinBox):
    pass


class QComboBox(QWidget):
    currentIndexChanged = signal()
    currentTextChanged = signal()
    activated = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []  # [text, data]
        self._current = -1

    @property
    def count(self):
        return len(self._items)

    def addItem(self, text, data=None):
        self._items.append([str(text), data])
        if self._current < 0:
            self._setCurrent(0)

    def addItems(self, texts):
        for t in texts:
            self.addItem(t)

    def insertSeparator(self, index):
        pass

    def clear(self):
        self._items = []
        self._setCurrent(-1)

    def removeItem(self, index):
        del self._items[index]
        if self._current >= len(self._items):
            self._setCurrent(len(self._items) - 1)

    def itemText(self, index):
        return self._items[index][0] if 0 <= index < len(self._items) else ""

    def itemData(self, index, role=None):
        return self._items[index][1] if 0 <= index < len(self._items) else None

    def setItemData(self, index, value, role=None):
        if role is None or role == Qt.UserRole:
            self._items[index][1] = value

    def findData(self, value, role=None):
        for i, (_, data) in enumerate(self._items):
            if data == value:
                return i
        return -1

    def findText(self, text):
        for i, (t, _) in enumerate(self._items):
            if t == text:
                return i
        return -1

    def _setCurrent(self, index):
        index = int(index)
        if index < -1 or index >= len(self._items):
            index = -1
        if index != self._current:
            self._current = index
            self.currentIndexChanged.emit(index)
            self.currentTextChanged.emit(self.currentText)

    @property
    def currentIndex(self):
        return self._current

    @currentIndex.setter
    def currentIndex(self, index):
        self._setCurrent(index)

    def setCurrentIndex(self, index):
        self._setCurrent(index)

    @property
    def currentText(self):
        return self.itemText(self._current)

    @currentText.setter
    def currentText(self, text):
        self._setCurrent(self.findText(text))

    @property
    def currentData(self):  # a Q_PROPERTY: PythonQt gives an attribute, not a method
        return self.itemData(self._current)


class QTimer(QObject):
    timeout = signal()
    _active = weakref.WeakSet()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval = 0
        self.singleShot = False

    def setInterval(self, ms):
        self.interval = int(ms)

    def start(self, ms=None):
        if ms is not None:
            self.interval = int(ms)
        QTimer._active.add(self)

    def stop(self):
        QTimer._active.discard(self)

    def isActive(self):
        return self in QTimer._active

    @classmethod
    def fire_all(cls):
        for timer in list(cls._active):
            if timer.isActive():
                if timer.singleShot:
                    timer.stop()
                timer.timeout.emit()


class QSettings(QObject):
    """Settings kept in memory for the life of the test process; ``store`` is shared like a real settings file."""

    store: dict = {}

    def __init__(self, *args):
        super().__init__(None)

    def value(self, key, default=None, type=None):  # noqa: A002 - Qt's name
        return QSettings.store.get(key, default)

    def setValue(self, key, value):
        QSettings.store[key] = value

    def contains(self, key):
        return key in QSettings.store

    def remove(self, key):
        QSettings.store.pop(key, None)

    def sync(self):
        pass


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return os.path.isfile(self.path)

    def open(self, mode):
        return True

    def close(self):
        pass


class Qt:
    WaitCursor = 3
    UserRole = 256
    ShiftModifier = 0x02000000
    Vertical = 2
    Horizontal = 1


class QMessageBox(QWidget):
    Ok, Cancel, Yes, No, Critical, Question, Warning, Information = 1024, 4194304, 16384, 65536, 3, 4, 2, 1


class QApplication:
    @staticmethod
    def setOverrideCursor(cursor):
        pass

    @staticmethod
    def restoreOverrideCursor():
        pass

    @staticmethod
    def processEvents():
        QTimer.fire_all()


class QIcon:
    def __init__(self, *args):
        pass


class QUiLoader:
    """Builds a widget tree from a ``.ui`` file with the double classes (Qt Designer's XML)."""

    def load(self, qfile, parent=None):
        root = ET.parse(qfile.path).getroot()
        widgets = {}
        top = self._widget(root.find("widget"), parent, widgets)
        for c in root.iter("connection"):
            sender, receiver = widgets[c.findtext("sender")], widgets[c.findtext("receiver")]
            slot = getattr(receiver, c.findtext("slot").split("(")[0])
            getattr(sender, c.findtext("signal").split("(")[0]).connect(slot)
        return top

    def _widget(self, element, parent, widgets):
        cls = widget_class(element.get("class"))
        w = cls(parent)
        w.name = w.objectName = element.get("name")
        widgets[w.name] = w
        for prop in element.findall("property"):
            name, value = prop.get("name"), _property_value(prop)
            if prop.get("stdset") == "0":
                w.setProperty(name, value)
            elif name not in ("geometry", "sizeHint", "orientation"):
                setattr(w, name, value)
        for child in element:
            if child.tag == "widget":
                self._widget(child, w, widgets)
            elif child.tag == "layout":
                self._layout(child, w, widgets)
        return w

    def _layout(self, element, owner, widgets):
        for item in element.findall("item"):
            for child in item:
                if child.tag == "widget":
                    self._widget(child, owner, widgets)
                elif child.tag == "layout":
                    self._layout(child, owner, widgets)


def _property_value(prop):
    child = list(prop)[0]
    tag, text = child.tag, child.text or ""
    if tag == "string":
        return text
    if tag == "bool":
        return text.strip().lower() == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    if tag == "enum":
        return text
    return text


# ============================================================================================= ctk double
class ctkComboBox(QComboBox):  # noqa: N801 - Slicer's class names
    pass


class ctkPathLineEdit(QWidget):  # noqa: N801
    currentPathChanged = signal()
    Files, Dirs, Readable, Writable, Executable = 1, 2, 4, 8, 16

    def __init__(self, parent=None):
        super().__init__(parent)
        self._path = ""
        self.filters = 0
        self.nameFilters = []
        self.settingKey = ""

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, value):
        value = str(value)
        if value != self._path:
            self._path = value
            self.currentPathChanged.emit(value)

    def setCurrentPath(self, value):
        self.currentPath = value

    def addCurrentPathToHistory(self):
        pass


class ctkCollapsibleButton(QAbstractButton):  # noqa: N801
    contentsCollapsed = signal()

    def __init__(self, parent=None):
        super().__init__("", parent)
        self.collapsed = False


class ctkCheckBox(QCheckBox):  # noqa: N801
    pass


# ========================================================================================== slicer widgets
class qMRMLWidget(QWidget):  # noqa: N801
    mrmlSceneChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qSlicerWidget(qMRMLWidget):  # noqa: N801
    pass


class qSlicerScriptedLoadableModuleWidget(qSlicerWidget):  # noqa: N801
    """The panel's parent in Slicer: ``isEntered`` is True while the module is shown."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.isEntered = False


class qMRMLNodeComboBox(qMRMLWidget):  # noqa: N801
    """The node selector: ``nodeTypes``, ``currentNode()``/``setCurrentNode``, ``currentNodeChanged``.
    Like the real one, with ``noneEnabled`` false it selects the first matching node of its scene."""

    currentNodeChanged = signal()
    currentNodeIDChanged = signal()
    nodeAdded = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.nodeTypes = []
        self.noneEnabled = False
        self.addEnabled = self.removeEnabled = self.renameEnabled = self.editEnabled = False
        self.showChildNodeTypes = True
        self.baseName = ""
        self.noneDisplay = ""
        self._node = None

    def _matches(self, node):
        if node is None:
            return False
        ok = any(node.IsA(t) for t in self.nodeTypes)
        if ok and not self.showChildNodeTypes:
            ok = node.GetClassName() in self.nodeTypes
        return ok

    def setMRMLScene(self, scene):
        super().setMRMLScene(scene)
        if not self.noneEnabled and self._node is None and scene is not None:
            for t in self.nodeTypes:
                node = scene.GetFirstNodeByClass(t)
                if self._matches(node):
                    self.setCurrentNode(node)
                    break

    def currentNode(self):
        node = self._node
        if node is not None and self._scene is not None and not self._scene.IsNodePresent(node):
            return None
        return node

    def currentNodeID(self):
        node = self.currentNode()
        return node.GetID() if node is not None else ""

    def setCurrentNode(self, node):
        if node is not None and not self._matches(node):
            raise TypeError(f"{self.name}: {node.GetClassName()} is not one of {self.nodeTypes}")
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def setCurrentNodeID(self, nodeID):
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if nodeID else None)


class qMRMLSubjectHierarchyComboBox(qMRMLWidget):  # noqa: N801
    currentItemChanged = signal()


QT_CLASSES = {c.__name__: c for c in (
    QObject, QWidget, QLayout, QVBoxLayout, QHBoxLayout, QFormLayout, QGridLayout, QAbstractButton, QPushButton,
    QToolButton, QRadioButton, QCheckBox, QLabel, QLineEdit, QPlainTextEdit, QTextEdit, QProgressBar, QSpinBox,
    QDoubleSpinBox, QSlider, QComboBox, QTimer, QSettings, QFile, Qt, QMessageBox, QApplication, QIcon, QUiLoader)}
CTK_CLASSES = {c.__name__: c for c in (ctkComboBox, ctkPathLineEdit, ctkCollapsibleButton, ctkCheckBox)}
SLICER_WIDGETS = {c.__name__: c for c in (qMRMLWidget, qSlicerWidget, qSlicerScriptedLoadableModuleWidget,
                                          qMRMLNodeComboBox, qMRMLSubjectHierarchyComboBox)}


def _module_with_auto_classes(name: str, classes: dict, base, prefixes: tuple) -> types.ModuleType:
    """A module with ``classes``; any other capitalised or q/ctk-prefixed name becomes a new widget class
    of its own (cached), so that ``type(widget) == module.Name`` checks in Slicer's connectors are exact."""
    module = types.ModuleType(name)
    module.__dict__.update(classes)

    def __getattr__(attr):
        if not attr.startswith(prefixes):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        cls = type(attr, (base,), {})
        setattr(module, attr, cls)
        return cls

    module.__getattr__ = __getattr__
    return module


def widget_class(name: str):
    for table in (QT_CLASSES, CTK_CLASSES, SLICER_WIDGETS):
        if name in table:
            return table[name]
    module = sys.modules["ctk"] if name.startswith("ctk") else sys.modules["slicer"] if name.startswith(
        ("qMRML", "qSlicer")) else sys.modules["qt"]
    return getattr(module, name)


# ================================================================================================ the app
class _Options:
    testingEnabled = True


class _ModuleManager(QObject):
    moduleAboutToBeUnloaded = signal()


class SlicerApp(QObject):
    startupCompleted = signal()

    def __init__(self, temp_dir: str):
        super().__init__(None)
        self.temporaryPath = temp_dir
        self.applicationName = "Slicer"
        self._moduleManager = _ModuleManager()
        self.layoutManagerDouble = None

    def processEvents(self, *args):
        QTimer.fire_all()

    def testingEnabled(self):
        return True

    def commandOptions(self):
        return _Options()

    def moduleManager(self):
        return self._moduleManager

    def startupEnvironment(self):
        return _Environment(os.environ)

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def layoutManager(self):
        return self.layoutManagerDouble

    def translate(self, context, text):
        return text

    def mainWindow(self):
        return None

    def topLevelWidgets(self):
        return []

    def userSettings(self):
        return QSettings()

    def settings(self):
        return QSettings()

    def pauseRender(self):
        pass

    def resumeRender(self):
        pass


class _Environment:
    def __init__(self, env):
        self._env = dict(env)

    def keys(self):
        return list(self._env)

    def value(self, key):
        return self._env.get(key, "")


# ================================================================================================ loading
def _load(name: str, path: Path, package: bool = False):
    spec = importlib.util.spec_from_file_location(
        name, path / "__init__.py" if package else path,
        submodule_search_locations=[str(path)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: modules bound to one release's ``slicer``/``qt``/``ctk``: dropped from ``sys.modules`` on entry and exit, so
#: that each release imports them afresh. The module file and the Lib modules that import Slicer's modules (the
#: logic and self-test bodies) are here; ``bridge``, ``mrml`` and ``downloads`` are pure Python and stay.
_MANAGED = ("qt", "ctk", "slicer", "MRtoCTSynthesis", "MRtoCTSynthesisLib.slicer.logic",
            "MRtoCTSynthesisLib.slicer.selftest")

#: panels built by :func:`make_module_widget` in the current environment; torn down when it ends
_WIDGETS: list = []


def _tear_down_widgets():
    """What Slicer does to a module panel when it quits: ``exit()`` if the panel is shown, then ``cleanup()``,
    which cancels a run and removes the panel's scene observers. Without it, observers of panels from
    earlier tests stay on their scenes and fire on half-collected widgets when the interpreter exits."""
    while _WIDGETS:
        widget = _WIDGETS.pop()
        parent = getattr(widget, "parent", None)
        if getattr(parent, "isEntered", False):
            widget.exit()
            parent.isEntered = False
        widget.cleanup()


def _purge():
    """Drop the :data:`_MANAGED` modules (and ``slicer.*``) from ``sys.modules`` and from their package's
    attributes: ``from MRtoCTSynthesisLib.slicer import logic`` takes the package attribute when there is one,
    so leaving it would hand the next release the module bound to the previous release's ``slicer``."""
    for k in list(sys.modules):
        if k in _MANAGED or k.startswith("slicer."):
            del sys.modules[k]
            parent, _, child = k.rpartition(".")
            if k in _MANAGED and parent in sys.modules and hasattr(sys.modules[parent], child):
                delattr(sys.modules[parent], child)


@contextlib.contextmanager
def slicer_environment(release: str, temp_dir: str | None = None):
    """``sys.modules`` holding ``qt``, ``ctk`` and a ``slicer`` made of slicer-core's MRML classes plus
    Slicer ``release``'s Python sources; yields that ``slicer`` module. Everything is restored afterwards."""
    sources = reference_sources(release)
    if sources is None:
        raise FileNotFoundError(f"no Slicer {release} sources under {REFERENCE_DIR}")
    import slicer_core  # the real MRML library (the slicer-core wheel)

    saved = {k: v for k, v in sys.modules.items() if k in _MANAGED or k.startswith(("slicer.", "slicer_harness_"))}
    _purge()
    saved_settings = dict(QSettings.store)
    QTimer._active.clear()
    _WIDGETS.clear()
    tmp = tempfile.TemporaryDirectory(prefix=f"slicer-{release}-") if temp_dir is None else None
    try:
        qt = _module_with_auto_classes("qt", QT_CLASSES, QWidget, ("Q",))
        ctk = _module_with_auto_classes("ctk", CTK_CLASSES, QWidget, ("ctk",))
        slicer = _module_with_auto_classes("slicer", SLICER_WIDGETS, QWidget, ("qMRML", "qSlicer"))
        slicer.__path__ = [str(sources)]
        for attr in dir(slicer_core):
            if attr.startswith("vtk") or attr.startswith("MRML"):
                setattr(slicer, attr, getattr(slicer_core, attr))
        slicer.mrmlScene = slicer_core.vtkMRMLScene()
        slicer.app = SlicerApp(temp_dir or tmp.name)
        slicer.modules = types.SimpleNamespace(mrtoctsynthesis=types.SimpleNamespace(path=str(MODULE_PY)))
        slicer.release = release
        sys.modules.update(qt=qt, ctk=ctk, slicer=slicer)
        slicer.i18n = _load("slicer.i18n", sources / "i18n.py")
        slicer.util = _load("slicer.util", sources / "util.py")
        if (sources / "packaging.py").is_file():
            slicer.packaging = _load("slicer.packaging", sources / "packaging.py")
        slicer.parameterNodeWrapper = _load("slicer.parameterNodeWrapper", sources / "parameterNodeWrapper", True)
        slicer.ScriptedLoadableModule = _load("slicer.ScriptedLoadableModule", sources / "ScriptedLoadableModule.py")
        yield slicer
    finally:
        try:
            _tear_down_widgets()
        finally:
            QTimer._active.clear()
            QSettings.store.clear()
            QSettings.store.update(saved_settings)
            _purge()
            sys.modules.update(saved)
            for k, module in saved.items():  # the package attribute too, as an import would have set it
                parent, _, child = k.rpartition(".")
                if k in _MANAGED and parent in sys.modules:
                    setattr(sys.modules[parent], child, module)
            if tmp is not None:
                tmp.cleanup()


#: the answers of ``mrtoct info/devices --json``, kept for the whole test session like Slicer keeps them for its
#: session (the first test that builds a panel runs the real engine queries; later imports reuse them)
ENGINE_CACHE: dict = {}


def import_module_file():
    """Import ``MRtoCTSynthesis.py`` (inside :func:`slicer_environment`) as Slicer does: its folder on sys.path."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    module = _load("MRtoCTSynthesis", MODULE_PY)
    module.MRtoCTSynthesisLogic._engineCache = ENGINE_CACHE
    return module


def make_module_widget(module):
    """The panel as Slicer builds it: the module's description object, then the widget on a qMRMLWidget
    parent, ``setup()`` and ``enter()``."""
    import qt
    import slicer

    parent = slicer.qSlicerScriptedLoadableModuleWidget()
    parent.setLayout(qt.QVBoxLayout())
    parent.setMRMLScene(slicer.mrmlScene)
    description = types.SimpleNamespace(path=str(MODULE_PY))
    module.MRtoCTSynthesis(description)
    widget = module.MRtoCTSynthesisWidget(parent)
    _WIDGETS.append(widget)  # torn down (exit, cleanup) when the environment ends, as Slicer does on quit
    widget.setup()
    parent.isEntered = True
    widget.enter()
    return widget


def bound_connectors(parameter_node) -> dict:
    """``{parameter name: connector}`` of every GUI binding of a parameter node wrapper (all tags)."""
    out = {}
    for mapping in parameter_node._parameterGUIs.values():
        out.update(mapping)
    return out
