"""MR to CT Synthesis: a 3D Slicer module that turns an MRI volume into a synthetic CT with diffusion models.

The module itself is thin. It collects the inputs, writes them as NIfTI files to a temporary folder and
runs the engine's ``mrtoct`` command line (``MRtoCTSynthesisLib.apps.cli``) with Slicer's Python in a
separate process. It reads that process's output on a QTimer and loads the results back into the
scene.

This file holds what Slicer looks up by name (``MRtoCTSynthesis``, ``MRtoCTSynthesisWidget``,
``MRtoCTSynthesisLogic``, ``MRtoCTSynthesisTest``), the parameter node, its GUI connector and the Sample
Data registration. The logic's body (the engine job runner) is ``MRtoCTSynthesisLib.slicer.logic`` and the
self-test's body is ``MRtoCTSynthesisLib.slicer.selftest``; the classes here subclass them. Everything that
can run outside Slicer lives in ``MRtoCTSynthesisLib.slicer.bridge`` (command lines, progress and error
parsing, geometry conversion) and ``MRtoCTSynthesisLib.slicer.mrml`` (arrays and matrices in and out of MRML
nodes), both tested with pytest outside Slicer.
"""

import importlib
import logging
import os
import pathlib
import typing
from typing import Annotated, Optional, Union

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import (
    Choice,
    GuiConnector,
    WithinRange,
    parameterNodeWrapper,
)
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MRtoCTSynthesisLib.slicer import bridge as slicer_bridge
from MRtoCTSynthesisLib.slicer import downloads as model_downloads

# The logic and self-test bodies are imported as modules, not as names: a TestCase class named in this file's
# namespace would be collected as a test of its own by unittest (slicer_add_python_unittest, Reload & Test).
from MRtoCTSynthesisLib.slicer import logic as engine_logic
from MRtoCTSynthesisLib.slicer import selftest as module_selftest

RESOURCES_DIR = engine_logic.RESOURCES_DIR

#
# MRtoCTSynthesis
#


class MRtoCTSynthesis(ScriptedLoadableModule):
    """Module description (title, category, help, acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MR to CT Synthesis"
        self.parent.categories = ["Image Synthesis"]
        self.parent.dependencies = []  # torch is installed on first use (ensureDependencies), after confirmation
        self.parent.contributors = ["MRtoCTSynthesis developers"]
        self.parent.helpText = """
<p>Synthesises a CT (sCT, in Hounsfield units) from an MRI volume with conditional diffusion models, and a
per-voxel uncertainty map: the standard deviation over several Monte-Carlo samples.</p>
<p><b>Workflow</b></p>
<ol>
<li>Load an MRI (or click <i>MRtoCTPhantom</i> in Sample Data for a demo case with MRI, CT and body mask).</li>
<li>Optional: choose a reference CT. <i>Register MRI to CT</i> resamples the MRI onto the CT grid
(rigid, then affine), so that the sCT can be compared with the CT voxel by voxel.</li>
<li>Choose the method, then a model of that method from the list (bundled, downloaded, or <i>Download</i> for a
downloadable one; <i>Add local file...</i> for your own), a sampler, the number of steps and of Monte-Carlo
samples, and the device (the GPUs the engine reports). The methods come from the engine: conditional DDPM,
VE-SDE score model, DDMM-Synth, SynDiff and deterministic CNN/GAN baselines. DDMM-Synth samples a DDPM model and
also uses sparse-view projections (N<sub>p</sub>, noise &sigma;<sub>n</sub>) simulated from the reference CT.
The body mask may be a label map or a segmentation.</li>
<li>Click <i>Apply</i>; when it is disabled, the reason is written under it (for example a model trained for
another method). The engine runs in a separate process, so Slicer stays responsive. The progress bar shows the
slices done and the time left, and <i>Cancel</i> stops the run and loads nothing. <i>Apply to all MRIs</i> runs
every loaded MRI in turn.</li>
</ol>
<p>Outputs, in a folder named after the MRI under its study: the sCT (CT window, soft tissue or bone), the
uncertainty map (Monte-Carlo std in HU, colour table and scalar bar) and, when a reference CT on the same grid
is given, the difference sCT &minus; CT (blue-white-red), a table with MAE/ME (HU), PSNR and SSIM, and a layout
that shows MRI | sCT | CT | std side by side with linked views.</p>
<p>PyTorch: the module installs it into Slicer's Python on first use, after asking; only the engine process
imports it.</p>
<p>The same engine runs without Slicer: <code>mrtoct demo</code>, or for example
<code>mrtoct synthesize --mri mr.nii.gz --model model.safetensors --out-ct sct.nii.gz
--out-std sct_std.nii.gz --samples 10</code>; see <code>mrtoct --help</code>.</p>
"""
        self.parent.acknowledgementText = """
<p>The methods follow these papers:</p>
<ul>
<li>Q. Lyu and G. Wang, "Conversion between CT and MRI images using diffusion and score-matching models",
arXiv:2209.12104, 2022.</li>
<li>X. Li, K. Shang, G. Wang and M. D. Butala, "DDMM-Synth: a denoising diffusion model for cross-modal medical
image synthesis with sparse-view measurement embedding", arXiv:2303.15770, 2023.</li>
<li>M. &Ouml;zbey, O. Dalmaz, S. U. H. Dar, H. A. Bedel, &Scedil;. &Ouml;zturk, A. G&uuml;ng&ouml;r and T. &Ccedil;ukur,
"Unsupervised medical image translation with adversarial diffusion models" (SynDiff), IEEE Transactions on
Medical Imaging, 2023.</li>
<li>S. Sharma et al., "Image modality translation between MRI and CT using diffusion and score-matching
algorithms", 2025.</li>
</ul>
<p>The subprocess runner follows the design of the SlicerMONAIAuto3DSeg extension. PyTorch is installed into
Slicer's Python on first use (after you agree) and runs only in the engine's own process.</p>
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the bundled phantom case (MRI, CT, body mask) to the Sample Data module."""
    try:
        import SampleData
    except ImportError:
        return
    icon = RESOURCES_DIR / "Icons" / "MRtoCTSynthesis.png"
    sources = slicer_bridge.sample_data_sources(thumbnail=icon if icon.exists() else None)
    if not sources:
        logging.info("MRtoCTSynthesis: demo case not found in %s; sample data not registered",
                     slicer_bridge.DEMO_CASE_DIR)
    for source in sources:
        try:
            SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)
        except TypeError:  # SampleData without checksums/loadFileTypes (older Slicer)
            legacy = {k: v for k, v in source.items() if k not in ("checksums", "loadFileTypes")}
            SampleData.SampleDataLogic.registerCustomSampleDataSource(**legacy)


#
# Parameter node
#


@parameterNodeWrapper
class MRtoCTSynthesisParameterNode:
    """Everything the module's GUI shows; saved with the scene.

    ``method``, ``sampler`` and ``device`` are plain strings whose choices come from the engine at run time
    (``mrtoct info --json``, ``mrtoct devices --json``; see ``DynamicChoiceComboBoxConnector``). ``steps`` 0
    and ``projections`` 0 mean "the engine's default".
    """

    inputMRI: vtkMRMLScalarVolumeNode
    referenceCT: vtkMRMLScalarVolumeNode
    bodyMask: Optional[Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode]]  # a label map or a segmentation
    # the first mode is the default (rigid)
    registrationMode: Annotated[str, Choice(list(slicer_bridge.REGISTRATION_MODES))] = "rigid"
    registeredMRI: vtkMRMLScalarVolumeNode
    modelPath: pathlib.Path = slicer_bridge.DEFAULT_MODEL  # the 2 mm DDPM (README "The model at 2 mm pixels")
    method: str = "ddpm"
    sampler: str = "dpmpp"
    steps: Annotated[int, WithinRange(0, 100000)] = 0
    samples: Annotated[int, WithinRange(1, 1000)] = 5
    projections: Annotated[int, WithinRange(0, 1800)] = 0
    noiseSigma: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    nsmi: Annotated[str, Choice(list(slicer_bridge.NSMI_CHOICES))] = "auto"
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    device: str = "auto"
    keepTemporaryFiles: bool = False
    outputSCT: vtkMRMLScalarVolumeNode
    outputStd: vtkMRMLScalarVolumeNode
    outputDifference: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode


def _plainType(datatype):
    if typing.get_origin(datatype) is Annotated:
        return typing.get_args(datatype)[0]
    return datatype


class DynamicChoiceComboBoxConnector(GuiConnector):
    """Connects a combo box to a ``str`` parameter whose choices the module fills at run time.

    The methods and samplers come from the engine (``mrtoct info --json``) and the sampler list depends on
    the chosen method, so the module fills these combo boxes itself: each item's data is the value, and its
    text is a label for people.

    This connector is deliberately *not* registered with ``@parameterNodeGuiConnector``: from Slicer 5.8.0
    on, Slicer's own ``QComboBoxToStringableConnector`` claims every (Q|ctk)ComboBox bound to a ``str`` and
    raises "requires the Choice annotation" without one. It is registered before any module's connector and
    the first ``canRepresent`` wins, so a registered connector of ours would never be reached. The widget
    passes an instance of this class to ``connectParametersToGui`` instead (see
    :func:`connectParameterNodeToGui`), which every Slicer from 5.6 to 5.12 accepts as it is.
    """

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) in (qt.QComboBox, ctk.ctkComboBox) and _plainType(datatype) is str

    @staticmethod
    def create(widget, datatype):
        if DynamicChoiceComboBoxConnector.canRepresent(widget, datatype):
            return DynamicChoiceComboBoxConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentIndexChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentIndexChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        index = self._widget.currentIndex
        if index < 0:
            return ""
        data = self._widget.itemData(index)
        return str(data) if data else self._widget.itemText(index)

    def write(self, value) -> None:
        wasBlocked = self._widget.blockSignals(True)
        try:
            self._widget.currentIndex = self._widget.findData(value) if value else -1
        finally:
            self._widget.blockSignals(wasBlocked)


#: parameters bound to combo boxes that the module fills itself (see DynamicChoiceComboBoxConnector)
DYNAMIC_CHOICE_PARAMETERS = ("method", "sampler", "device")


def boundWidgets(ui) -> dict:
    """``{parameter name: widget}`` for every widget of ``ui`` whose ``SlicerParameterName`` property is set.

    ``ui`` is the object from ``slicer.util.childWidgetVariables``; this is the lookup that Slicer's own
    ``connectGui`` does on such an object.
    """
    out = {}
    for widget in vars(ui).values():
        name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
        if name:
            out[str(name)] = widget
    return out


def connectParameterNodeToGui(parameterNode, ui):
    """Bind every widget of ``ui`` that names a parameter; returns the tag for ``disconnectGui``.

    Works the same in Slicer 5.6 to 5.12, whatever order the GUI connectors were registered in: the combo
    boxes of :data:`DYNAMIC_CHOICE_PARAMETERS` get a :class:`DynamicChoiceComboBoxConnector` instance, and
    every other widget gets the connector Slicer picks for its type. (Slicer 5.6's ``connectGui`` also
    returns None instead of the tag, so ``disconnectGui`` could not undo it; ``connectParametersToGui``
    returns the tag in every release.)
    """
    mapping = boundWidgets(ui)
    for name in DYNAMIC_CHOICE_PARAMETERS:
        if name in mapping:
            mapping[name] = DynamicChoiceComboBoxConnector(mapping[name])
    return parameterNode.connectParametersToGui(mapping)


#
# MRtoCTSynthesisWidget
#


class MRtoCTSynthesisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module's panel. It connects the .ui file to the parameter node and to the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._samplerItemsMethod = None
        self._modelItemsMethod = None
        self._pendingModel = None  # a catalog model the user picked that is not on this computer yet
        self._queue = []  # MRIs still to synthesise after the current one ("Apply to all MRIs")
        self._queueTotal = 0
        self._download = None
        self._downloadTimer = None
        self._updatingWidgets = False
        self._modelSummaryCache = (None, None, None)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRtoCTSynthesis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MRtoCTSynthesisLogic()

        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        self.ui.modelPathLineEdit.nameFilters = ["Checkpoints (*.safetensors *.pt *.pth)", "All files (*)"]
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.hide()
        self.ui.downloadProgressBar.setRange(0, 1000)
        self.ui.downloadProgressBar.hide()
        self._downloadTimer = qt.QTimer()
        self._downloadTimer.setInterval(200)
        self._downloadTimer.connect("timeout()", self._pollDownload)
        with slicer.util.WaitCursor():
            self._populateMethods()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # the queue button counts the loaded MRIs
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self._onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self._onSceneNodesChanged)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.queueButton.connect("clicked(bool)", self.onQueueButton)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependenciesButton)
        self.ui.compareLayoutButton.connect("clicked(bool)", self.onCompareLayoutButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        for name, (window, level) in slicer_bridge.CT_WINDOW_PRESETS.items():
            self.ui.ctWindowComboBox.addItem(f"{name.capitalize()} (W {window:.0f} / L {level:.0f})", name)
        remembered = qt.QSettings().value("MRtoCTSynthesis/ctWindow")
        if remembered in slicer_bridge.CT_WINDOW_PRESETS:
            self.ui.ctWindowComboBox.currentIndex = self.ui.ctWindowComboBox.findData(remembered)
        # itemData(currentIndex), not currentData: PythonQt exposes QComboBox.currentData as a property
        self.logic.ctWindow = self.ui.ctWindowComboBox.itemData(self.ui.ctWindowComboBox.currentIndex) or "soft tissue"
        self.ui.ctWindowComboBox.connect("currentIndexChanged(int)", self.onCtWindowChanged)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModelButton)
        self.ui.addLocalModelButton.connect("clicked(bool)", self.onAddLocalModelButton)

        self.initializeParameterNode()

    def onReload(self) -> None:
        """Developer mode's Reload: Slicer re-reads this file only, so the logic and self-test bodies in the Lib
        package are reloaded first (the classes here then subclass the new ones, as when they lived here)."""
        importlib.reload(engine_logic)
        importlib.reload(module_selftest)
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel(wait=True)
        if self._download is not None and not self._download.finished:
            self._download.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateWidgets)

    def _onSceneNodesChanged(self, caller=None, event=None) -> None:
        if self._parameterNode is not None and not slicer.mrmlScene.IsClosing():
            self._updateWidgets()

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        fresh = self.logic.parameterNodeIsNew()
        parameterNode = self.logic.getParameterNode()
        if fresh:  # a new scene: start from the choices of the last session (a saved scene's own values win)
            self.logic.restoreSettings(parameterNode)  # before binding, which saves what the panel shows
        self.setParameterNode(parameterNode)
        if not self._parameterNode.inputMRI:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputMRI = first

    def setParameterNode(self, inputParameterNode: Optional[MRtoCTSynthesisParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateWidgets)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectParameterNodeToGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateWidgets)
            self._samplerItemsMethod = None
            self._updateWidgets()

    # ------------------------------------------------------------------------------- dynamic widgets
    def _populateMethods(self, refresh: bool = False) -> None:
        """Fill the method and device lists from the engine process (``mrtoct info/devices --json``)."""
        info = self.logic.engineInfo(refresh=refresh)
        devices = self.logic.engineDevices(refresh=refresh)
        combo = self.ui.methodComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for name in slicer_bridge.methods(info):
                combo.addItem(slicer_bridge.method_label(name, info), name)
        finally:
            combo.blockSignals(wasBlocked)
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for value, label in slicer_bridge.device_choices(devices):
                combo.addItem(label, value)
        finally:
            combo.blockSignals(wasBlocked)
        self._samplerItemsMethod = None
        problem = self.logic.engineProblem()
        if problem:
            self.ui.statusLabel.text = problem

    def _populateSamplers(self, method: str) -> None:
        info = self.logic.engineInfo()
        labels = (info or {}).get("sampler_labels") or slicer_bridge.SAMPLER_LABELS
        combo = self.ui.samplerComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for name in slicer_bridge.valid_samplers(method, info):
                combo.addItem(f"{labels.get(name, name)} ({name})", name)
        finally:
            combo.blockSignals(wasBlocked)
        self._samplerItemsMethod = method

    @staticmethod
    def _select(combo, value) -> None:
        wasBlocked = combo.blockSignals(True)
        try:
            combo.currentIndex = combo.findData(value)
        finally:
            combo.blockSignals(wasBlocked)

    def _modelSummary(self, path):
        """Checkpoint method etc. from the safetensors header (cached per path and modification time)."""
        try:
            mtime = os.path.getmtime(path)
        except OSError:
            return None
        if self._modelSummaryCache[:2] != (str(path), mtime):
            self._modelSummaryCache = (str(path), mtime, slicer_bridge.read_checkpoint_summary(path))
        return self._modelSummaryCache[2]

    # -------------------------------------------------------------------------------------- model manager
    def _populateModels(self, method: str) -> None:
        """The catalog's models that fit ``method`` (bundled, downloaded or downloadable), then 'Other file'."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for entry in self.logic.modelsForMethod(method):
                combo.addItem(self.logic.modelLabel(entry), entry["name"])
            combo.addItem("Other file (chosen below)", "")
        finally:
            combo.blockSignals(wasBlocked)
        self._modelItemsMethod = method

    def onModelSelected(self, index) -> None:
        if self._updatingWidgets or self._parameterNode is None:
            return
        name = self.ui.modelComboBox.itemData(index)
        entry = self.logic.modelEntry(name) if name else None
        if entry is None:
            self._pendingModel = None
            self._updateWidgets()
            return
        path = self.logic.modelFile(entry)
        if path is not None:
            self._pendingModel = None
            self._parameterNode.modelPath = path
        else:
            self._pendingModel = name
        self._updateWidgets()

    def onDownloadModelButton(self) -> None:
        if self._download is not None and not self._download.finished:
            self._download.cancel()
            return
        entry = self.logic.modelEntry(self._pendingModel) if self._pendingModel else None
        if entry is None:
            return
        self._download = self.logic.startModelDownload(entry)
        self.ui.downloadProgressBar.value = 0
        self.ui.downloadProgressBar.show()
        self.ui.statusLabel.text = f"Downloading {entry['title']}..."
        self._downloadTimer.start()
        self._updateWidgets()

    def _pollDownload(self) -> None:
        d = self._download
        if d is None:
            self._downloadTimer.stop()
            return
        total = max(1, d.total)
        self.ui.downloadProgressBar.value = int(1000 * min(d.done, total) / total)
        self.ui.downloadProgressBar.format = f"%p%   {d.done / 1e6:.1f} of {total / 1e6:.1f} MB"
        if not d.finished:
            return
        self._downloadTimer.stop()
        self._download = None
        self.ui.downloadProgressBar.hide()
        if d.path is not None:
            self._pendingModel = None
            self._modelItemsMethod = None  # relabel: the model is now "downloaded"
            self.ui.statusLabel.text = f"Downloaded and verified (SHA-256): {d.path}"
            self._parameterNode.modelPath = d.path
        else:
            self.ui.statusLabel.text = d.error or "The download did not finish."
        self._updateWidgets()

    def onAddLocalModelButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, "Choose a model file", "",
                                              "Checkpoints (*.safetensors *.pt *.pth);;All files (*)")
        if path:
            self.addLocalModel(path)

    def addLocalModel(self, path) -> None:
        """Use a model file the user has; one with a catalog model's SHA-256 becomes that model in the cache."""
        try:
            file, entry = self.logic.addLocalModel(path)
        except (model_downloads.DownloadError, OSError) as exc:
            self.ui.statusLabel.text = f"The file cannot be used as a model: {exc}"
            return
        self._pendingModel = None
        self._modelItemsMethod = None
        self._parameterNode.modelPath = file
        self.ui.statusLabel.text = (f"Added as catalog model '{entry['name']}' (SHA-256 matches)." if entry else
                                    f"Using the model file {file}.")
        self._updateWidgets()

    def _updateModelManager(self, p, method: str) -> None:
        if self._modelItemsMethod != method:
            self._populateModels(method)
        names = [self.ui.modelComboBox.itemData(i) for i in range(self.ui.modelComboBox.count)]
        if self._pendingModel not in names:
            self._pendingModel = None
        current = self.logic.entryForFile(p.modelPath)
        selected = self._pendingModel or (current["name"] if current and current["name"] in names else "")
        self._select(self.ui.modelComboBox, selected)
        pending = self.logic.modelEntry(self._pendingModel) if self._pendingModel else None
        downloading = self._download is not None and not self._download.finished
        button = self.ui.downloadModelButton
        button.visible = pending is not None or downloading
        if downloading:
            button.text, button.enabled = "Cancel download", True
        elif pending is not None:
            button.text = f"Download ({pending['size'] / 1e6:.1f} MB)"
            button.enabled = bool(pending.get("url"))
            button.toolTip = pending.get("url") or pending.get("availability") or "not published yet"
        self.ui.addLocalModelButton.enabled = not downloading

    def _updateWidgets(self, caller=None, event=None) -> None:
        """Keep method/sampler/model consistent, enable DDMM-Synth options only for DDMM-Synth, update buttons."""
        p = self._parameterNode
        if p is None or self._updatingWidgets:
            return
        self._updatingWidgets = True
        try:
            available = [self.ui.methodComboBox.itemData(i) for i in range(self.ui.methodComboBox.count)]
            method = p.method if p.method in available else (available[0] if available else p.method)
            if self._samplerItemsMethod != method:
                self._populateSamplers(method)
            info = self.logic.engineInfo()
            samplers = slicer_bridge.valid_samplers(method, info)
            sampler = p.sampler if p.sampler in samplers else slicer_bridge.default_sampler(method, info)
            if p.method != method:
                p.method = method
            if sampler and p.sampler != sampler:
                p.sampler = sampler
            self._select(self.ui.methodComboBox, method)
            self._select(self.ui.samplerComboBox, sampler)
            devices = [self.ui.deviceComboBox.itemData(i) for i in range(self.ui.deviceComboBox.count)]
            if devices and p.device not in devices:
                p.device = "auto"
            self._select(self.ui.deviceComboBox, p.device)

            self.ui.stepsSpinBox.enabled = slicer_bridge.sampler_takes_steps(sampler)
            ddmm = slicer_bridge.uses_measurements(method)
            for w in (self.ui.projectionsSpinBox, self.ui.noiseSigmaSpinBox, self.ui.nsmiComboBox):
                w.enabled = ddmm

            self._updateModelManager(p, method)
            self.logic.saveSettings(p)
            summary = self._modelSummary(p.modelPath)
            entry = self.logic.entryForFile(p.modelPath)
            if not p.modelPath or not pathlib.Path(p.modelPath).is_file():
                info = "Model file not found."
            elif summary is None:
                info = "Not an mrtoct .safetensors checkpoint (legacy .pt files are checked when run)."
            else:
                info = f"{summary.get('method')} checkpoint, {summary.get('image_size')} px slices"
            if entry is not None:
                spacing = entry.get("training_spacing_mm")
                info += (f"; {entry['anatomy']}, {entry['mr_contrast']}; trained at "
                         + ("each slice resized" if not spacing else
                            " x ".join("any" if v is None else f"{v:g}" for v in spacing) + " mm")
                         + f"; licence: {entry['licence']}")
            self.ui.modelInfoLabel.text = info

            running = self.logic.isRunning()
            reason = self.logic.whyCannotApply(p, summary=summary, pendingModel=self._pendingModel)
            self.ui.applyReasonLabel.text = "" if running else reason
            self.ui.applyReasonLabel.visible = bool(reason) and not running
            if running:
                self.ui.applyButton.text = "Cancel"
                self.ui.applyButton.toolTip = "Stop the engine; nothing is written."
                self.ui.applyButton.enabled = True
            else:
                self.ui.applyButton.text = "Apply"
                self.ui.applyButton.enabled = not reason
                self.ui.applyButton.toolTip = reason or "Synthesise a CT from the MRI."
            candidates = self.logic.queueCandidates(p)
            self.ui.queueButton.text = f"Apply to all {len(candidates)} MRIs (queue)"
            self.ui.queueButton.enabled = (not running and len(candidates) > 1
                                           and not self.logic.whyCannotApply(p, summary=summary, needInput=False,
                                                                             pendingModel=self._pendingModel))
            self.ui.registerButton.enabled = (not running) and bool(p.inputMRI) and bool(p.referenceCT)
            self.ui.compareLayoutButton.enabled = (not running) and bool(p.outputSCT)
        finally:
            self._updatingWidgets = False

    # --------------------------------------------------------------------------------------- actions
    def _callbacks(self):
        return dict(onProgress=self._onProgress, onLog=self._onLog, onStage=self._onStage, onFinished=self._onFinished)

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self._queue = []  # Cancel stops the whole queue
            self.logic.cancel()
            self._onStage("Cancelling...")
            return
        if not self._dependenciesReady(needTorch=True):
            return
        with slicer.util.tryWithErrorDisplay("Could not start the synthesis.", waitCursor=True):
            self.ui.logTextEdit.clear()
            self.logic.synthesize(self._parameterNode, **self._callbacks())
            self._setRunning(True)

    def onQueueButton(self) -> None:
        """Synthesise every loaded MRI in turn, with the panel's settings; each gets its own new outputs."""
        mris = self.logic.queueCandidates(self._parameterNode)
        if len(mris) < 2 or self.logic.isRunning():
            return
        self._queue, self._queueTotal = mris, len(mris)
        self._startNextInQueue()

    def _startNextInQueue(self) -> None:
        p = self._parameterNode
        mri = self._queue.pop(0)
        with slicer.util.NodeModify(p):
            p.inputMRI = mri
            p.outputSCT = p.outputStd = p.outputDifference = p.metricsTable = None
        done = self._queueTotal - len(self._queue)
        reason = self.logic.whyCannotApply(p)
        if reason:
            self._queue = []
            self.ui.statusLabel.text = f"Queue stopped at {mri.GetName()} ({done} of {self._queueTotal}): {reason}"
            return
        self.onApplyButton()
        if self.logic.isRunning():
            self.ui.statusLabel.text = f"Queue: {done} of {self._queueTotal}: {mri.GetName()}"
        else:
            self._queue = []

    def onRegisterButton(self) -> None:
        if not self._dependenciesReady(needTorch=False):
            return
        with slicer.util.tryWithErrorDisplay("Could not start the registration.", waitCursor=True):
            self.ui.logTextEdit.clear()
            self.logic.register(self._parameterNode, **self._callbacks())
            self._setRunning(True)

    def _dependenciesReady(self, needTorch: bool, askConfirmation: bool = True) -> bool:
        """Install what is missing (after the user agrees); any failure is shown in the panel, not raised."""
        try:
            with slicer.util.WaitCursor():
                ready, installed = self.logic.ensureDependencies(self._parameterNode.device, needTorch=needTorch,
                                                                 askConfirmation=askConfirmation)
        except Exception as exc:  # pip errors, no network, declined restart... all end up here as a message
            logging.exception("MRtoCTSynthesis: installing the dependencies failed")
            message = f"Installing the Python packages the engine needs failed:\n{exc}"
            self.ui.statusLabel.text = message
            slicer.util.errorDisplay(message, windowTitle="MR to CT Synthesis")
            return False
        if not ready:
            self.ui.statusLabel.text = "The engine's Python packages are not installed; nothing was run."
            return False
        if installed:  # torch (or another package) is new: ask the engine again what it offers
            self._populateMethods(refresh=True)
            self._updateWidgets()
        return True

    def onInstallDependenciesButton(self) -> None:
        if self._dependenciesReady(needTorch=True):
            self._populateMethods(refresh=True)
            self._updateWidgets()
            info = self.logic.engineInfo()
            self.ui.statusLabel.text = ("All dependencies are installed." if info is None else
                                        f"All dependencies are installed (engine {info.get('engine_version')}, "
                                        f"torch {info.get('torch')}).")

    def onCtWindowChanged(self, index) -> None:
        """Soft tissue / bone: applied to the sCT and the reference CT at once, and remembered."""
        preset = self.ui.ctWindowComboBox.itemData(index) or "soft tissue"
        self.logic.ctWindow = preset
        qt.QSettings().setValue("MRtoCTSynthesis/ctWindow", preset)
        p = self._parameterNode
        for node in (p.outputSCT, p.referenceCT) if p else ():
            if node is not None:
                self.logic.showSyntheticCT(node, preset)

    def onCompareLayoutButton(self) -> None:
        p = self._parameterNode
        self.logic.showCompareLayout(p.inputMRI, p.outputSCT, p.referenceCT, p.outputStd)

    # ------------------------------------------------------------------------------ logic callbacks
    def _setRunning(self, running: bool) -> None:
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.value = 0
            self.ui.progressBar.format = "%p%"
        self._updateWidgets()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(fraction * 1000))
        text = slicer_bridge.progress_text(message)
        self.ui.progressBar.format = "%p%" + (f"   {text}" if text else "")

    def _onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def _onStage(self, text: str) -> None:
        self.ui.statusLabel.text = text
        slicer.util.showStatusMessage(text, 5000)

    def _onFinished(self, status: str, message: str) -> None:
        self._setRunning(False)
        self.ui.statusLabel.text = message
        if self._queue and status != "cancelled":  # a failed MRI is reported in the log; the queue goes on
            if status != "ok":
                self.ui.logTextEdit.appendPlainText(f"{self._parameterNode.inputMRI.GetName()}: {message}")
            self._startNextInQueue()
            return
        self._queue = []
        if status in ("input_error", "failed"):
            slicer.util.errorDisplay(message, windowTitle="MR to CT Synthesis")


#
# MRtoCTSynthesisLogic
#


class MRtoCTSynthesisLogic(engine_logic.EngineLogic):
    """Runs the engine in a separate process and brings its results into the scene (see
    ``MRtoCTSynthesisLib.slicer.logic.EngineLogic``). Slicer finds it by this name, and the parameter node's
    module name ("MRtoCTSynthesis") comes from it."""

    parameterNodeClass = MRtoCTSynthesisParameterNode


#
# MRtoCTSynthesisTest
#


class MRtoCTSynthesisTest(module_selftest.SelfTest):
    """Tests inside Slicer on the bundled phantom case (see ``MRtoCTSynthesisLib.slicer.selftest.SelfTest``).
    Run them from the Reload & Test button or with
    ``Slicer --python-code "import MRtoCTSynthesis; MRtoCTSynthesis.MRtoCTSynthesisTest().runTest()"``."""

    logicClass = MRtoCTSynthesisLogic
    registerSampleData = staticmethod(registerSampleData)
