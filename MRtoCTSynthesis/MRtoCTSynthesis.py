"""MR to CT Synthesis: a 3D Slicer module that turns an MRI volume into a synthetic CT with diffusion models.

The module itself is thin. It collects the inputs, writes them as NIfTI files to a temporary folder and
runs the engine's ``mrtoct`` command line (``MRtoCTSynthesisLib.apps.cli``) with Slicer's Python in a
separate process. It reads that process's output on a QTimer and loads the results back into the
scene. Everything that can run outside Slicer lives in ``MRtoCTSynthesisLib.slicer.bridge`` (command
lines, progress and error parsing, geometry conversion) and ``MRtoCTSynthesisLib.slicer.mrml`` (arrays and
matrices in and out of MRML nodes), both tested with pytest outside Slicer.
"""

import importlib.util
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time
import typing
from typing import Annotated, Optional, Union

import ctk
import numpy as np
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
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MRtoCTSynthesisLib.slicer import bridge as slicer_bridge
from MRtoCTSynthesisLib.slicer import downloads as model_downloads
from MRtoCTSynthesisLib.slicer import mrml as mrml_glue

MODULE_DIR = pathlib.Path(__file__).resolve().parent
RESOURCES_DIR = MODULE_DIR / "Resources"
#: the torch the engine supports (pyproject.toml's range); installed into Slicer's Python, never imported by Slicer
TORCH_REQUIREMENT = "torch>=2.1,<2.14"
#: PyTorch's own index of CPU-only wheels (no multi-GB CUDA libraries) for a CPU-only device choice
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

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
    registrationMode: Annotated[str, Choice(list(slicer_bridge.REGISTRATION_MODES))] = "rigid+affine"
    registeredMRI: vtkMRMLScalarVolumeNode
    modelPath: pathlib.Path = slicer_bridge.DEMO_MODEL
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


class _Job:
    """One press of Apply or Register: a queue of engine runs sharing a temporary folder."""

    def __init__(self, kind, tempDir, settings, callbacks):
        self.kind = kind
        self.tempDir = tempDir
        self.settings = settings
        self.onProgress = callbacks.get("onProgress")
        self.onLog = callbacks.get("onLog")
        self.onStage = callbacks.get("onStage")
        self.onFinished = callbacks.get("onFinished")
        self.stages = []  # [(description, argv, onSuccess)]
        self.result = None  # (status, message) once finished
        self.notes = []


class MRtoCTSynthesisLogic(ScriptedLoadableModuleLogic):
    """Runs the engine in a separate process and brings its results into the scene.

    It works without the widget. ``synthesize``/``register`` take the parameter node and return at once.
    Progress, log lines and the end are reported through the callbacks, and ``wait=True`` (for tests
    and scripts) keeps processing events until the job ends and returns ``(status, message)``.
    """

    POLL_INTERVAL_MS = 200

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None
        self._process = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)
        self.ctWindow = "soft tissue"  # a key of slicer_bridge.CT_WINDOW_PRESETS
        self.pythonExecutable = slicer_bridge.python_executable()

    def getParameterNode(self):
        return MRtoCTSynthesisParameterNode(super().getParameterNode())

    def isRunning(self) -> bool:
        return self._job is not None

    # --------------------------------------------------------------------------------- remembered choices
    #: parameters remembered across Slicer sessions (qt.QSettings, key "MRtoCTSynthesis/<name>")
    REMEMBERED = ("modelPath", "method", "sampler", "steps", "samples", "device")

    def parameterNodeIsNew(self) -> bool:
        """True when the scene has no parameter node of this module yet (a new scene)."""
        return slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode") is None

    def saveSettings(self, p) -> None:
        settings = qt.QSettings()
        for name in self.REMEMBERED:
            value = str(getattr(p, name))
            if settings.value(f"MRtoCTSynthesis/{name}") != value:
                settings.setValue(f"MRtoCTSynthesis/{name}", value)

    def restoreSettings(self, p) -> None:
        """Put the remembered choices into ``p``; values that no longer make sense (a deleted model file, a
        method this engine lacks, a number out of range) are skipped."""
        settings = qt.QSettings()
        for name in self.REMEMBERED:
            value = settings.value(f"MRtoCTSynthesis/{name}")
            if value in (None, ""):
                continue
            try:
                if name == "modelPath":
                    if not pathlib.Path(value).is_file():
                        continue
                    value = pathlib.Path(value)
                elif name in ("steps", "samples"):
                    value = int(value)
                elif name == "method" and value not in slicer_bridge.methods(self.engineInfo()):
                    continue
                setattr(p, name, value)
            except (TypeError, ValueError):  # out of range for the parameter (WithinRange) or not a number
                logging.info("MRtoCTSynthesis: remembered %s=%r skipped", name, value)

    # ------------------------------------------------------------------------------------ dependencies
    def missingDependencies(self, needTorch: bool = True):
        """``(pip requirements to install, torch missing)``; nothing is imported."""
        requirements = slicer_bridge.parse_requirements((RESOURCES_DIR / "requirements.txt").read_text())
        missing = slicer_bridge.requirements_to_install(requirements)
        torchMissing = needTorch and importlib.util.find_spec("torch") is None
        return missing, torchMissing

    def ensureDependencies(self, device: str = "auto", needTorch: bool = True, askConfirmation: bool = True):
        """Install what the engine needs into Slicer's Python; returns ``(ready, installedSomething)``.

        Packages come from ``Resources/requirements.txt`` plus torch (:data:`TORCH_REQUIREMENT`). They are
        installed with ``slicer.packaging.pip_ensure`` where Slicer has it (5.12 on) and with
        ``slicer.util.pip_install`` otherwise; a CPU-only device choice takes torch from PyTorch's CPU wheel
        index. Nothing is installed unless the user agrees (``askConfirmation``). torch is only installed here,
        never imported: the engine runs it in its own process. Errors propagate (the widget shows them).
        """
        missing, torchMissing = self.missingDependencies(needTorch)
        if not missing and not torchMissing:
            return True, False
        torchArgs = []
        if torchMissing:
            torchArgs = [TORCH_REQUIREMENT] + (["--index-url", TORCH_CPU_INDEX] if device == "cpu" else [])
        what = missing + ([" ".join(torchArgs)] if torchArgs else [])
        if askConfirmation and not slicer.app.commandOptions().testingEnabled:
            if not slicer.util.confirmOkCancelDisplay(
                    "MR to CT Synthesis needs these Python packages, which will be downloaded and installed into "
                    "Slicer's Python now (this may take several minutes):\n\n  " + "\n  ".join(what),
                    windowTitle="MR to CT Synthesis"):
                return False, False
        packaging = getattr(slicer, "packaging", None)
        if missing:
            if packaging is not None and hasattr(packaging, "pip_ensure"):
                packaging.pip_ensure(missing, prompt_install=False, requester="MR to CT Synthesis")
            else:
                slicer.util.pip_install(missing)
        if torchArgs:
            if packaging is not None and hasattr(packaging, "pip_ensure") and len(torchArgs) == 1:
                packaging.pip_ensure(torchArgs, prompt_install=False, requester="MR to CT Synthesis")
            else:
                slicer.util.pip_install(torchArgs)
        missing, torchMissing = self.missingDependencies(needTorch)
        if missing or torchMissing:
            raise RuntimeError("Some packages are still missing after the installation: "
                               + ", ".join(missing + (["torch"] if torchMissing else []))
                               + "\nFix: restart Slicer and try again; if it persists, install them from the Python "
                               "console with slicer.util.pip_install(...) and read pip's message.")
        type(self)._engineCache.clear()
        return True, True

    # ------------------------------------------------------------------------------- asking the engine
    #: {(python, query): (document or None, problem or None)}; shared by every logic of this Slicer session
    _engineCache: dict = {}

    def _launch(self, argv):
        """Start the engine like Slicer starts any console process (stdout and stderr in one text pipe)."""
        # PythonSlicer is a launcher that sets up Slicer's environment itself, so it starts from the environment
        # Slicer was started with. A bare interpreter (the fallback) needs Slicer's current environment.
        # This is slicer.util.launchConsoleProcess with one change: the pipe is decoded as UTF-8 (the engine writes
        # UTF-8, see engine_environment), where launchConsoleProcess uses the locale's code page (cp1252 on most
        # Windows machines), which garbles or drops lines with sigma, umlauts or non-ASCII file names.
        launcher = pathlib.Path(argv[0]).name.lower().startswith("pythonslicer")
        base = slicer.util.startupEnvironment() if launcher else dict(os.environ)
        env = dict(base)
        env.update(slicer_bridge.engine_environment(base))
        kwargs = {}
        if os.name == "nt":  # hide the console window, as launchConsoleProcess does
            info = subprocess.STARTUPINFO()
            info.dwFlags = 1
            info.wShowWindow = 0
            kwargs["startupinfo"] = info
        return subprocess.Popen([str(a) for a in argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                cwd=str(MODULE_DIR), **kwargs)

    def _queryEngine(self, query: str, argv, expectedFormat: str, refresh: bool, timeout: float = 180.0):
        key = (self.pythonExecutable, query)
        if refresh or key not in self._engineCache:
            doc, problem = None, None
            try:
                popen = self._launch(argv)
                try:
                    output, _ = popen.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    slicer_bridge.kill_process_tree(popen.pid, popen=popen)
                    output = ""
                    problem = f"the engine did not answer `mrtoct {query}` within {timeout:.0f} s"
                if problem is None:
                    doc = slicer_bridge.parse_json_output(output, expectedFormat)
                    if popen.returncode != 0 or doc is None:
                        doc = None
                        problem = slicer_bridge.describe_exit(popen.returncode, output, what="The engine")[1]
            except Exception as exc:  # the interpreter cannot be started at all
                problem = f"the engine could not be started: {exc}"
            self._engineCache[key] = (doc, problem)
        return self._engineCache[key][0]

    def engineInfo(self, refresh: bool = False):
        """``mrtoct info --json`` of the engine process (methods, samplers, models, versions), or None."""
        return self._queryEngine("info --json", slicer_bridge.build_info_command(self.pythonExecutable),
                                 "mrtoct-engine-info", refresh)

    def engineDevices(self, refresh: bool = False):
        """``mrtoct devices --json`` of the engine process (CUDA GPUs, MPS, CPU), or None."""
        return self._queryEngine("devices --json", slicer_bridge.build_devices_command(self.pythonExecutable),
                                 "mrtoct-devices", refresh)

    def engineProblem(self):
        """Why the engine could not list its methods (for the panel), or None when it could."""
        doc, problem = self._engineCache.get((self.pythonExecutable, "info --json"), (None, None))
        if doc is not None or problem is None:
            return None
        if importlib.util.find_spec("torch") is None:
            return ("PyTorch is not installed in Slicer's Python yet, so the built-in method list is shown. "
                    "Press 'Check / install dependencies' (Advanced) or Apply to install it.")
        return f"The engine could not list its methods ({problem}); the built-in list is shown."

    # ------------------------------------------------------------------------------------- model manager
    def modelCatalog(self) -> list:
        """The checked entries of ``Resources/models.json`` (read once per logic; [] with a log line if broken)."""
        if getattr(self, "_catalog", None) is None:
            try:
                self._catalog = slicer_bridge.load_model_catalog(RESOURCES_DIR / "models.json")
            except Exception as exc:  # the panel still works with 'Other file'
                logging.error("MRtoCTSynthesis: %s", exc)
                self._catalog = []
        return self._catalog

    def modelCacheDir(self) -> pathlib.Path:
        """Where downloaded models go: the MRtoCTSynthesis/ModelCacheDir setting, else the user's cache folder."""
        custom = qt.QSettings().value("MRtoCTSynthesis/ModelCacheDir")
        return pathlib.Path(custom) if custom else model_downloads.model_cache_dir()

    def modelEntry(self, name):
        return next((e for e in self.modelCatalog() if e["name"] == name), None)

    def modelsForMethod(self, method: str) -> list:
        """Catalog models whose checkpoint the method can run (DDMM-Synth runs on DDPM checkpoints)."""
        return [e for e in self.modelCatalog() if slicer_bridge.checkpoint_matches_method(method, e["method"])]

    def modelFile(self, entry):
        """The local file of a catalog entry (bundled, or downloaded and verified), or None."""
        return model_downloads.model_file(entry, MODULE_DIR, self.modelCacheDir())

    def entryForFile(self, path):
        """The catalog entry whose local file is ``path``, or None."""
        if not path:
            return None
        try:
            target = pathlib.Path(path).resolve()
        except OSError:
            return None
        for entry in self.modelCatalog():
            local = self.modelFile(entry)
            if local is not None and local.resolve() == target:
                return entry
        return None

    def modelLabel(self, entry) -> str:
        if entry.get("bundled"):
            where = "bundled"
        elif self.modelFile(entry) is not None:
            where = "downloaded"
        elif entry.get("url"):
            where = f"download, {entry['size'] / 1e6:.1f} MB"
        else:
            where = entry.get("availability") or "not published yet"
        return f"{entry['title']} ({where})"

    def startModelDownload(self, entry):
        """Download a catalog model into the cache on a background thread; returns the ModelDownload to poll."""
        return model_downloads.ModelDownload(entry, self.modelCacheDir()).start()

    def addLocalModel(self, path):
        return model_downloads.add_local_model(path, self.modelCatalog(), self.modelCacheDir())

    #: node attribute that marks the module's outputs (they are never queued as inputs)
    OUTPUT_ATTRIBUTE = "MRtoCTSynthesis.Output"

    def queueCandidates(self, p) -> list:
        """Loaded MRIs for 'Apply to all': scalar volumes that are not label maps, not the reference CT and not
        outputs of this module, in scene order."""
        out = []
        nodes = slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(self.OUTPUT_ATTRIBUTE):
                continue
            if p.referenceCT is not None and node.GetID() == p.referenceCT.GetID():
                continue
            out.append(node)
        return out

    def whyCannotApply(self, p, summary=None, pendingModel=None, needInput: bool = True) -> str:
        """The reason Apply is disabled (shown next to it), or "" when the synthesis can run.

        The method picked is the method run: a checkpoint trained for another method blocks Apply.
        ``needInput`` False leaves out the input MRI (the queue brings its own).
        """
        method = p.method
        ddmm = slicer_bridge.uses_measurements(method)
        if needInput and not p.inputMRI:
            return "Select an input MRI."
        if pendingModel:
            entry = self.modelEntry(pendingModel)
            title = entry["title"] if entry else pendingModel
            return (f"Download the model '{title}' first" + (" (it is not published yet)" if entry and not
                                                              entry.get("url") else "") + ", or choose another one.")
        if not p.modelPath or not pathlib.Path(p.modelPath).is_file():
            return f"Choose a model: the file {p.modelPath} does not exist."
        if summary is None:
            summary = slicer_bridge.read_checkpoint_summary(p.modelPath)
        checkpointMethod = (summary or {}).get("method")
        if not slicer_bridge.checkpoint_matches_method(method, checkpointMethod):
            needs = ", ".join(sorted(slicer_bridge.COMPATIBLE_CHECKPOINTS.get(method, {method})))
            return (f"The model is a '{checkpointMethod}' checkpoint, but the method is '{method}' (it needs a "
                    f"{needs} checkpoint). Choose a model of that method, or the method '{checkpointMethod}'.")
        if p.sampler and p.sampler not in slicer_bridge.valid_samplers(method, self.engineInfo()):
            return f"The sampler '{p.sampler}' does not work with the method '{method}'."
        if ddmm and not p.referenceCT:
            return "DDMM-Synth needs a reference CT: its sparse-view projections are simulated from it."
        return ""

    # --------------------------------------------------------------------------------------- file I/O
    @staticmethod
    def writeVolume(node, path) -> None:
        """Write a volume node to NIfTI with its world geometry (parent linear transforms included)."""
        import SimpleITK as sitk

        array, _ = mrml_glue.array_and_matrix_from_node(node)
        sitk.WriteImage(slicer_bridge.sitk_image_from_array(array, mrml_glue.world_ijk_to_ras(node)), str(path), True)

    @staticmethod
    def readVolumeOntoGrid(path, gridNode, outputNode, name):
        """Load an engine output that lies on ``gridNode``'s grid into ``outputNode`` (created if None).

        The voxels come from the file. The geometry is ``gridNode``'s own IJK->RAS matrix and parent
        transform, copied exactly rather than taken from the NIfTI header.
        """
        import SimpleITK as sitk

        array, fileMatrix = slicer_bridge.array_and_ijk_to_ras_from_sitk(sitk.ReadImage(str(path)))
        gridShape = mrml_glue.volume_shape(gridNode)
        if tuple(array.shape) != tuple(gridShape):
            raise RuntimeError(f"{path} has {array.shape} voxels but {gridNode.GetName()} has {gridShape}")
        if not slicer_bridge.same_grid(array.shape, fileMatrix, gridShape, mrml_glue.world_ijk_to_ras(gridNode),
                                       tol_mm=1e-2):
            logging.warning("MRtoCTSynthesis: %s is not exactly on the grid of %s; using %s's geometry",
                            path, gridNode.GetName(), gridNode.GetName())
        if outputNode is None:
            outputNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                            slicer.mrmlScene.GenerateUniqueName(name))
        mrml_glue.volume_node_from_array(slicer.mrmlScene, array.astype(np.float32, copy=False),
                                         mrml_glue.get_ijk_to_ras(gridNode), node=outputNode)
        outputNode.SetAttribute(MRtoCTSynthesisLogic.OUTPUT_ATTRIBUTE, name)
        outputNode.SetAndObserveTransformNodeID(gridNode.GetTransformNodeID())
        return outputNode

    def _newTempDir(self, kind: str) -> pathlib.Path:
        base = pathlib.Path(slicer.app.temporaryPath) / "MRtoCTSynthesis"
        base.mkdir(parents=True, exist_ok=True)
        return pathlib.Path(tempfile.mkdtemp(prefix=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=base))

    # ------------------------------------------------------------------------------------------- jobs
    @staticmethod
    def _settings(p) -> dict:
        """A snapshot of the parameter node, so that changes to the GUI during a run do not affect it."""
        names = list(MRtoCTSynthesisParameterNode.allParameters)
        return {name: p.getValue(name) for name in names} | {"_parameterNode": p}

    def synthesize(self, parameterNode, wait: bool = False, timeout: Optional[float] = None, **callbacks):
        """Run ``mrtoct synthesize`` on the input MRI, then load sCT and std onto the MRI's grid.

        With a reference CT on the same grid, ``mrtoct evaluate`` follows and produces the difference
        volume, the metrics table and the comparison layout.
        """
        s = self._settings(parameterNode)
        mri, ct = s["inputMRI"], s["referenceCT"]
        if self.isRunning():
            raise RuntimeError("The engine is already running; cancel it first.")
        if mri is None or mri.GetImageData() is None:
            raise ValueError("Select an input MRI volume.")
        if not pathlib.Path(s["modelPath"]).is_file():
            raise ValueError(f"The model file {s['modelPath']} does not exist.\nFix: choose a .safetensors checkpoint.")
        ddmm = slicer_bridge.uses_measurements(s["method"])
        reason = self.whyCannotApply(parameterNode)
        if reason:
            raise ValueError(reason)

        inputs = {node.GetID() for node in (mri, ct, s["bodyMask"]) if node is not None}
        for name in ("outputSCT", "outputStd", "outputDifference"):
            if s[name] is not None and s[name].GetID() in inputs:
                raise ValueError(f"The output '{s[name].GetName()}' is also an input; choose or create another node.")

        job = _Job("synthesize", self._newTempDir("synthesize"), s, callbacks)
        d = job.tempDir
        try:
            self.writeVolume(mri, d / "mri.nii.gz")
        except Exception:
            shutil.rmtree(d, ignore_errors=True)
            raise
        ctOnGrid = ct is not None and slicer_bridge.same_grid(
            mrml_glue.volume_shape(mri), mrml_glue.world_ijk_to_ras(mri),
            mrml_glue.volume_shape(ct), mrml_glue.world_ijk_to_ras(ct), tol_mm=1e-3)
        if ct is not None and (ddmm or ctOnGrid):
            self.writeVolume(ct, d / "ct.nii.gz")
        argv = slicer_bridge.build_synthesize_command(
            self.pythonExecutable, d / "mri.nii.gz", s["modelPath"], d / "sct.nii.gz", d / "sct_std.nii.gz",
            method=s["method"], sampler=s["sampler"] or None, samples=s["samples"],
            steps=(s["steps"] or None) if slicer_bridge.sampler_takes_steps(s["sampler"]) else None,
            seed=s["seed"], device=s["device"], info_json=d / "run.json",
            reference_ct=(d / "ct.nii.gz") if ddmm else None,
            projections=(s["projections"] or None) if ddmm else None,
            noise_sigma=s["noiseSigma"] if ddmm else None, nsmi=s["nsmi"] if ddmm else None)

        def loadSynthesis():
            import json

            p = s["_parameterNode"]
            ran = json.loads((d / "run.json").read_text(encoding="utf-8")).get("method")
            if not slicer_bridge.method_run_matches(s["method"], ran):
                raise RuntimeError(f"the engine ran the method '{ran}', not the chosen '{s['method']}'; "
                                   "nothing was loaded")
            base = mri.GetName()
            sct = self.readVolumeOntoGrid(d / "sct.nii.gz", mri, s["outputSCT"], f"{base}_sCT")
            std = self.readVolumeOntoGrid(d / "sct_std.nii.gz", mri, s["outputStd"], f"{base}_sCT_std")
            self.showSyntheticCT(sct, self.ctWindow)
            self.showUncertainty(std)
            p.outputSCT, p.outputStd = sct, std
            self.placeResults(mri, [sct, std])
            # the engine's out-of-distribution check of this MRI: a warning in the status text, rows in the table
            s["_inputCheck"] = slicer_bridge.read_input_check(d / "run.json")
            checkText = slicer_bridge.input_check_text(s["_inputCheck"])
            if checkText:
                job.notes.append(checkText)
            if ct is None:
                self.showCompareLayout(mri, sct, None, std)
                return
            if not ctOnGrid:
                job.notes.append("The reference CT is on a different grid than the MRI, so no metrics were computed. "
                                 "Use 'Register MRI to CT' first, then synthesise from the registered MRI.")
                self.showCompareLayout(mri, sct, ct, std)
                return
            mask = s["bodyMask"]
            maskPath = None
            if mask is not None:
                if self.maskOnGrid(mask, mri, d / "mask.nii.gz"):
                    maskPath = d / "mask.nii.gz"
                else:
                    job.notes.append("The body mask is on another grid (or an empty segmentation); metrics use "
                                     "the whole volume.")
            evaluate = slicer_bridge.build_evaluate_command(self.pythonExecutable, d / "sct.nii.gz", d / "ct.nii.gz",
                                                            mask=maskPath, json_out=d / "metrics.json")
            job.stages.append(("Computing metrics against the reference CT...", evaluate, loadMetrics))

        def loadMetrics():
            import json

            p = s["_parameterNode"]
            metrics = json.loads((d / "metrics.json").read_text())
            rows = slicer_bridge.metrics_table_rows(metrics, s.get("_inputCheck"))
            table = s["metricsTable"] or slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(f"{mri.GetName()}_sCT_metrics"))
            mrml_glue.fill_table_node(table, rows)
            p.metricsTable = table
            sct, std = p.outputSCT, p.outputStd
            sctArray, _ = mrml_glue.array_and_matrix_from_node(sct)
            ctArray, _ = mrml_glue.array_and_matrix_from_node(ct)
            diff = s["outputDifference"] or slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLScalarVolumeNode", slicer.mrmlScene.GenerateUniqueName(f"{mri.GetName()}_sCT_minus_CT"))
            mrml_glue.volume_node_from_array(slicer.mrmlScene, sctArray.astype(np.float32) - ctArray.astype(np.float32),
                                             mrml_glue.get_ijk_to_ras(sct), node=diff)
            diff.SetAndObserveTransformNodeID(sct.GetTransformNodeID())
            diff.SetAttribute(self.OUTPUT_ATTRIBUTE, "difference")
            self.showDifference(diff)
            p.outputDifference = diff
            self.placeResults(mri, [diff, table])
            self.showCompareLayout(mri, sct, ct, std)
            job.notes.append(", ".join(f"{name} {value}" for name, value in rows[:4]))

        job.stages.append((f"Synthesising a CT ({s['method']}, {s['sampler'] or 'default sampler'}, "
                           f"{s['samples']} sample(s))...", argv, loadSynthesis))
        return self._startJob(job, wait, timeout)

    def register(self, parameterNode, wait: bool = False, timeout: Optional[float] = None, **callbacks):
        """Run ``mrtoct register`` (the MRI moves onto the reference CT's grid). The registered MRI then
        becomes the input MRI, so that a following synthesis can be compared with the CT."""
        s = self._settings(parameterNode)
        mri, ct = s["inputMRI"], s["referenceCT"]
        if self.isRunning():
            raise RuntimeError("The engine is already running; cancel it first.")
        if mri is None or ct is None:
            raise ValueError("Select both an input MRI and a reference CT to register them.")
        if s["registeredMRI"] is not None and s["registeredMRI"].GetID() in (mri.GetID(), ct.GetID()):
            raise ValueError("The registered MRI output is also an input; choose or create another node.")
        job = _Job("register", self._newTempDir("register"), s, callbacks)
        d = job.tempDir
        try:
            self.writeVolume(mri, d / "mri.nii.gz")
            self.writeVolume(ct, d / "ct.nii.gz")
        except Exception:
            shutil.rmtree(d, ignore_errors=True)
            raise
        argv = slicer_bridge.build_register_command(self.pythonExecutable, d / "ct.nii.gz", d / "mri.nii.gz",
                                                    d / "mri_registered.nii.gz", transform=d / "ct_to_mri.tfm",
                                                    mode=s["registrationMode"], seed=s["seed"])

        def loadRegistration():
            p = s["_parameterNode"]
            registered = self.readVolumeOntoGrid(d / "mri_registered.nii.gz", ct, s["registeredMRI"],
                                                 f"{mri.GetName()}_on_{ct.GetName()}")
            registered.RemoveAttribute(self.OUTPUT_ATTRIBUTE)  # an MRI again: it may be synthesised, also in a queue
            displayNode = registered.GetDisplayNode()
            mriDisplay = mri.GetDisplayNode()
            if displayNode and mriDisplay:
                displayNode.SetAutoWindowLevel(False)
                displayNode.SetWindowLevel(mriDisplay.GetWindow(), mriDisplay.GetLevel())
            p.registeredMRI = registered
            p.inputMRI = registered
            slicer.util.setSliceViewerLayers(background=registered, foreground=ct, foregroundOpacity=0.5, fit=True)
            job.notes.append(f"The registered MRI '{registered.GetName()}' is now the input MRI.")

        job.stages.append((f"Registering {mri.GetName()} to {ct.GetName()} ({s['registrationMode']})...", argv,
                           loadRegistration))
        return self._startJob(job, wait, timeout)

    def _startJob(self, job, wait, timeout):
        self._job = job
        self._startNextStage()
        if wait:
            return self.waitForCompletion(timeout)
        return None

    def _startNextStage(self) -> None:
        job = self._job
        description, argv, _ = job.stages[0]
        logging.info("MRtoCTSynthesis: %s", " ".join(str(a) for a in argv))
        if job.onStage:
            job.onStage(description)
        if job.onProgress:
            job.onProgress(0.0, "")
        popen = self._launch(argv)
        self._process = slicer_bridge.EngineProcess(popen)
        self._timer.start()

    def _poll(self) -> None:
        job, process = self._job, self._process
        if job is None or process is None:
            self._timer.stop()
            return
        for line in process.poll():
            progress = slicer_bridge.parse_progress_line(line)
            if progress is not None:
                if job.onProgress:
                    job.onProgress(*progress)
            elif job.onLog:
                job.onLog(line)
        if not process.finished:
            return
        self._timer.stop()
        self._process = None
        description, _, onSuccess = job.stages.pop(0)
        status, message = slicer_bridge.describe_exit(process.returncode, process.output(), what="The engine")
        if process.cancelled:
            status, message = "cancelled", "Cancelled; no output was written."
        if status == "ok":
            try:
                onSuccess()
            except Exception as exc:  # loading results failed: report it like an engine failure
                logging.exception("MRtoCTSynthesis: loading the results failed")
                status, message = "failed", f"The results could not be loaded: {exc}"
        if status == "ok" and job.stages:
            self._startNextStage()
            return
        if status == "ok":
            message = {"synthesize": "Synthetic CT done.", "register": "Registration done."}[job.kind]
            if job.notes:
                message += "\n" + "\n".join(job.notes)
        self._finishJob(status, message)

    def _finishJob(self, status: str, message: str) -> None:
        job = self._job
        self._job = None
        job.result = (status, message)
        if not job.settings.get("keepTemporaryFiles"):
            shutil.rmtree(job.tempDir, ignore_errors=True)
        else:
            message += f"\nTemporary files kept in {job.tempDir}"
            job.result = (status, message)
        logging.info("MRtoCTSynthesis: %s: %s", status, message)
        if job.onFinished:
            job.onFinished(status, message)
        self._lastResult = job.result

    def cancel(self, wait: bool = False) -> None:
        """Stop the running engine and every process it started. The GUI is not blocked unless ``wait``."""
        process = self._process
        if process is None:
            if self._job is not None:
                self._finishJob("cancelled", "Cancelled.")
            return
        if wait:
            process.cancel()
            self._poll()
        else:
            threading.Thread(target=process.cancel, name="mrtoct-cancel", daemon=True).start()

    def waitForCompletion(self, timeout: Optional[float] = None):
        """Process events until the current job ends; returns ``(status, message)`` (tests and scripts)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self._job
        while self._job is not None:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(wait=True)
                raise TimeoutError(f"the engine did not finish within {timeout} s")
            slicer.app.processEvents()
            time.sleep(0.02)
        return job.result if job is not None else getattr(self, "_lastResult", None)

    # ---------------------------------------------------------------------------------------- display
    @staticmethod
    def _colorNodeID(*names):
        for name in names:
            node = slicer.mrmlScene.GetFirstNodeByName(name)
            if node is not None and node.IsA("vtkMRMLColorNode"):
                return node.GetID()
        return None

    def showSyntheticCT(self, node, preset: str = "soft tissue") -> None:
        """Grey CT window (:data:`slicer_bridge.CT_WINDOW_PRESETS`: soft tissue or bone)."""
        display = node.GetDisplayNode()
        if display is None:
            return
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        display.SetAutoWindowLevel(False)
        window, level = slicer_bridge.CT_WINDOW_PRESETS.get(preset, slicer_bridge.CT_WINDOW_LEVEL)
        display.SetWindowLevel(window, level)

    @staticmethod
    def _addColorLegend(node, title: str) -> None:
        """A scalar bar (colour legend) in the views, where Slicer's Colors module can make one (Slicer >= 5.0)."""
        colors = getattr(slicer.modules, "colors", None)
        if colors is None:
            return
        try:
            legend = colors.logic().AddDefaultColorLegendDisplayNode(node)
            legend.SetTitleText(title)
            legend.SetLabelFormat("%.0f")
        except Exception as exc:  # a missing scalar bar must not fail the run
            logging.warning("MRtoCTSynthesis: no colour legend for %s: %s", node.GetName(), exc)

    def showUncertainty(self, node) -> None:
        """Sequential colour table from 0 to the 99th percentile of the std, with a scalar bar in HU."""
        display = node.GetDisplayNode()
        colorID = self._colorNodeID("Inferno") or mrml_glue.color_table(
            slicer.mrmlScene, "MRtoCT std (HU)", mrml_glue.SEQUENTIAL_POINTS).GetID()
        display.SetAndObserveColorNodeID(colorID)
        array, _ = mrml_glue.array_and_matrix_from_node(node)
        positive = array[array > 0]
        top = float(np.percentile(positive, 99)) if positive.size else 1.0
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, max(top, 1e-3))
        self._addColorLegend(node, "MC std (HU)")

    def showDifference(self, node) -> None:
        """Diverging colour table (blue below, white at 0, red above) over +-DIFFERENCE_RANGE_HU."""
        display = node.GetDisplayNode()
        colorID = self._colorNodeID("DivergingBlueRed") or mrml_glue.color_table(
            slicer.mrmlScene, "MRtoCT difference (HU)", mrml_glue.DIVERGING_POINTS).GetID()
        display.SetAndObserveColorNodeID(colorID)
        display.SetAutoWindowLevel(False)
        r = slicer_bridge.DIFFERENCE_RANGE_HU
        display.SetWindowLevelMinMax(-r, r)
        self._addColorLegend(node, "sCT - CT (HU)")

    def placeResults(self, mri, nodes) -> int:
        """Outputs into a subject-hierarchy folder "<MRI> synthetic CT" under the MRI's study."""
        try:
            return mrml_glue.place_in_study(slicer.mrmlScene, slicer.vtkMRMLSubjectHierarchyNode, mri, nodes,
                                            f"{mri.GetName()} synthetic CT")
        except Exception as exc:  # the hierarchy is a convenience; never lose results over it
            logging.warning("MRtoCTSynthesis: outputs not placed in the subject hierarchy: %s", exc)
            return 0

    def maskOnGrid(self, mask, mri, path) -> bool:
        """Write ``mask`` on the MRI's grid to ``path``: a label map/scalar volume already on that grid, or a
        segmentation (its visible segments, exported onto the MRI's grid). False when it cannot be used."""
        if mask.IsA("vtkMRMLSegmentationNode"):
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MRtoCT mask (temporary)")
            try:
                if not slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(mask, labelmap,
                                                                                                     mri):
                    return False
                self.writeVolume(labelmap, path)
                return True
            finally:
                slicer.mrmlScene.RemoveNode(labelmap)
        if slicer_bridge.same_grid(mrml_glue.volume_shape(mask), mrml_glue.world_ijk_to_ras(mask),
                                   mrml_glue.volume_shape(mri), mrml_glue.world_ijk_to_ras(mri), tol_mm=1e-3):
            self.writeVolume(mask, path)
            return True
        return False

    def showCompareLayout(self, mri, sct, ct, std) -> None:
        """MRI | sCT | reference CT | std in one row of linked axial views (views without a volume are left out)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (e.g. --no-main-window)
            return
        pairs = [(view, node) for view,
                 node in zip(slicer_bridge.COMPARE_VIEWS, (mri, sct, ct, std)) if node is not None]
        if not pairs:
            return
        layoutId = slicer_bridge.COMPARE_LAYOUT_ID + len(pairs)
        layoutNode = layoutManager.layoutLogic().GetLayoutNode()
        xml = slicer_bridge.compare_layout_xml([view for view, _ in pairs])
        if layoutNode.IsLayoutDescription(layoutId):
            layoutNode.SetLayoutDescription(layoutId, xml)
        else:
            layoutNode.AddLayoutDescription(layoutId, xml)
        layoutManager.setLayout(layoutId)
        slicer.app.processEvents()
        for (tag, _, _), node in pairs:
            sliceWidget = layoutManager.sliceWidget(tag)
            if sliceWidget is None:
                continue
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
            composite.SetLinkedControl(True)
            sliceWidget.sliceLogic().FitSliceToAll()


#
# MRtoCTSynthesisTest
#


class MRtoCTSynthesisTest(ScriptedLoadableModuleTest):
    """Tests inside Slicer on the bundled phantom case: registration, synthesis with few steps, geometry,
    metrics, engine errors and cancel. Run them from the Reload & Test button or with
    ``Slicer --python-code "import MRtoCTSynthesis; MRtoCTSynthesis.MRtoCTSynthesisTest().runTest()"``."""

    TIMEOUT_S = 900

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_dependencies()
        self.setUp()
        self.test_method_and_model_must_agree()
        self.setUp()
        self.test_registration()
        self.setUp()
        self.test_synthesis_with_metrics()
        self.setUp()
        self.test_ddmm_synth()
        self.setUp()
        self.test_engine_error_is_shown()
        self.setUp()
        self.test_cancel()

    # ----------------------------------------------------------------------------------------- helpers
    def _loadDemoCase(self):
        """Load the phantom through Sample Data (as a user would), or from the assets folder directly."""
        files = [slicer_bridge.DEMO_CASE_DIR / name for name, _ in slicer_bridge.DEMO_CASE_FILES]
        self.assertTrue(all(f.is_file() for f in files), f"demo case missing in {slicer_bridge.DEMO_CASE_DIR}")
        nodes = None
        try:
            import SampleData

            registerSampleData()
            nodes = SampleData.SampleDataLogic().downloadSamples("MRtoCTPhantom")
        except Exception as exc:
            logging.warning("Sample Data could not load the demo case (%s); loading the files directly", exc)
        if not nodes or len(nodes) < 3:
            nodes = [slicer.util.loadVolume(str(f)) for f in files]
        mri, ct, mask = nodes[:3]
        return mri, ct, mask

    def _parameters(self, mri, ct=None, mask=None, **values):
        logic = MRtoCTSynthesisLogic()
        p = logic.getParameterNode()
        p.inputMRI, p.referenceCT, p.bodyMask = mri, ct, mask
        p.modelPath = slicer_bridge.DEMO_MODEL
        p.method, p.sampler, p.steps, p.samples, p.seed, p.device = "ddpm", "dpmpp", 3, 2, 0, "cpu"
        for name, value in values.items():
            setattr(p, name, value)
        return logic, p

    def _assertSameGrid(self, a, b):
        self.assertEqual(mrml_glue.volume_shape(a), mrml_glue.volume_shape(b))
        np.testing.assert_array_equal(mrml_glue.get_ijk_to_ras(a), mrml_glue.get_ijk_to_ras(b))
        self.assertEqual(a.GetTransformNodeID(), b.GetTransformNodeID())

    # ------------------------------------------------------------------------------------------- tests
    def test_dependencies(self):
        self.delayDisplay("Checking dependencies")
        logic = MRtoCTSynthesisLogic()
        import sys

        torchBefore = "torch" in sys.modules  # another extension may have imported it; we must not
        ready, _ = logic.ensureDependencies("cpu", needTorch=True, askConfirmation=False)
        self.assertTrue(ready)
        info = logic.engineInfo(refresh=True)
        self.assertIsNotNone(info, logic.engineProblem())
        self.assertIn("ddpm", slicer_bridge.methods(info))
        self.assertIn("cpu", [value for value, _ in slicer_bridge.device_choices(logic.engineDevices(refresh=True))])
        if not torchBefore:
            self.assertNotIn("torch", sys.modules, "asking the engine imported torch into Slicer's process")
        self.assertTrue(slicer_bridge.DEMO_MODEL.is_file(), "bundled demo model is missing")

    def test_method_and_model_must_agree(self):
        self.delayDisplay("A model of another method blocks the run, with the reason")
        mri, _, _ = self._loadDemoCase()
        logic, p = self._parameters(mri, method="syndiff", sampler="syndiff")
        reason = logic.whyCannotApply(p)
        self.assertIn("'ddpm' checkpoint", reason)
        with self.assertRaises(ValueError):
            logic.synthesize(p)
        self.assertFalse(logic.isRunning())
        self.assertEqual([e["name"] for e in logic.modelsForMethod("syndiff")], ["demo_syndiff"])
        p.modelPath = logic.modelFile(logic.modelEntry("demo_syndiff"))
        self.assertEqual(logic.whyCannotApply(p), "")

    def test_registration(self):
        self.delayDisplay("Registering the phantom MRI to its CT")
        mri, ct, _ = self._loadDemoCase()
        original, _ = mrml_glue.array_and_matrix_from_node(mri)  # the phantom's MRI and CT share one grid
        # move the MRI by a known rigid offset so that the registration has something to do
        shifted = mrml_glue.get_ijk_to_ras(mri)
        shifted[:3, 3] += (6.0, -4.0, 3.0)
        mrml_glue.set_ijk_to_ras(mri, shifted)
        logic, p = self._parameters(mri, ct, registrationMode="rigid")
        status, message = logic.register(p, wait=True, timeout=self.TIMEOUT_S)
        self.assertEqual(status, "ok", message)
        registered = p.registeredMRI
        self.assertIsNotNone(registered)
        self._assertSameGrid(registered, ct)  # the registered MRI lies on the CT's grid
        self.assertEqual(p.inputMRI.GetID(), registered.GetID())  # the registered MRI is the new input
        # registration undoes the shift: resampled onto the CT grid, the MRI matches the unshifted original
        registeredArray, _ = mrml_glue.array_and_matrix_from_node(registered)
        correlation = float(np.corrcoef(registeredArray.ravel(), original.ravel())[0, 1])
        self.assertGreater(correlation, 0.9, f"registered MRI does not match the original (r = {correlation:.3f})")
        self.delayDisplay("Registration test passed")

    def test_synthesis_with_metrics(self):
        self.delayDisplay("Synthesising the phantom with the demo model (3 steps, 2 samples)")
        mri, ct, mask = self._loadDemoCase()
        logic, p = self._parameters(mri, ct, mask)
        progress = []
        status, message = logic.synthesize(p, wait=True, timeout=self.TIMEOUT_S,
                                           onProgress=lambda f, m: progress.append((f, m)))
        self.assertEqual(status, "ok", message)
        self.assertTrue(progress and max(f for f, _ in progress) == 1.0, f"no final progress report: {progress[-3:]}")
        # the outputs have exactly the MRI's grid
        for node in (p.outputSCT, p.outputStd, p.outputDifference):
            self.assertIsNotNone(node)
            self._assertSameGrid(node, mri)
        sct, _ = mrml_glue.array_and_matrix_from_node(p.outputSCT)
        std, _ = mrml_glue.array_and_matrix_from_node(p.outputStd)
        self.assertTrue(np.isfinite(sct).all())
        self.assertGreaterEqual(float(std.min()), 0.0)
        self.assertGreater(float(std.max()), 0.0)  # two samples differ somewhere
        # metrics table
        table = p.metricsTable
        self.assertIsNotNone(table)
        rows = dict(mrml_glue.table_rows(table))
        for key in ("MAE (HU)", "ME (HU)", "PSNR (dB)", "SSIM"):
            self.assertIn(key, rows)
        self.assertGreaterEqual(float(rows["MAE (HU)"]), 0.0)
        # the difference volume really is sCT - CT
        diff, _ = mrml_glue.array_and_matrix_from_node(p.outputDifference)
        ctArray, _ = mrml_glue.array_and_matrix_from_node(ct)
        np.testing.assert_allclose(diff, sct - ctArray.astype(np.float32), atol=1e-3)
        # the comparison layout shows the four volumes
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            tags = [tag for tag, _, _ in slicer_bridge.COMPARE_VIEWS]
            shown = [layoutManager.sliceWidget(t).mrmlSliceCompositeNode().GetBackgroundVolumeID() for t in tags]
            self.assertEqual(shown, [mri.GetID(), p.outputSCT.GetID(), ct.GetID(), p.outputStd.GetID()])
        self.delayDisplay("Synthesis test passed")

    def test_ddmm_synth(self):
        self.delayDisplay("DDMM-Synth: demo model + sparse-view projections of the phantom CT")
        from MRtoCTSynthesisLib.apps.cli import build_parser

        synthesize = next(a for a in build_parser()._actions
                          if a.__class__.__name__ == "_SubParsersAction").choices["synthesize"]
        if "--projections" not in synthesize._option_string_actions:
            self.skipTest("this engine's `mrtoct synthesize` has no DDMM-Synth options yet")
        self.assertIn("ddmm_synth", slicer_bridge.methods(MRtoCTSynthesisLogic().engineInfo()))
        mri, ct, mask = self._loadDemoCase()
        logic, p = self._parameters(mri, ct, mask, method="ddmm_synth", sampler="ddim", steps=3, samples=1,
                                    projections=10, noiseSigma=0.0, nsmi="noiseless")
        status, message = logic.synthesize(p, wait=True, timeout=self.TIMEOUT_S)
        self.assertEqual(status, "ok", message)
        self._assertSameGrid(p.outputSCT, mri)
        self.assertIsNotNone(p.metricsTable)
        # a loose sanity bound: with noiseless measurements the sCT's range space is the CT's
        self.assertLess(float(dict(mrml_glue.table_rows(p.metricsTable))["MAE (HU)"]), 300.0)
        self.delayDisplay("DDMM-Synth test passed")

    def test_engine_error_is_shown(self):
        self.delayDisplay("A broken model file gives the engine's error and fix")
        mri, _, _ = self._loadDemoCase()
        broken = pathlib.Path(slicer.app.temporaryPath) / "MRtoCTSynthesis-broken-model.safetensors"
        broken.write_bytes(b"this is not a checkpoint")
        logic, p = self._parameters(mri, modelPath=broken)
        status, message = logic.synthesize(p, wait=True, timeout=self.TIMEOUT_S)
        self.assertEqual(status, "input_error", message)
        self.assertIn("error:", message)
        self.assertIsNone(p.outputSCT)  # nothing is loaded on failure

    def test_cancel(self):
        self.delayDisplay("Cancelling a long run")
        mri, _, _ = self._loadDemoCase()
        logic, p = self._parameters(mri, sampler="ddpm", steps=1000, samples=4)
        seen = []
        logic.synthesize(p, onProgress=lambda f, m: seen.append(f))
        # let the engine start sampling (the first report, 0.0, comes from the module itself)
        deadline = time.monotonic() + 20
        while not any(f > 0 for f in seen) and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertTrue(logic.isRunning(), "the long run ended before it could be cancelled")
        started = time.monotonic()
        logic.cancel()
        status, message = logic.waitForCompletion(timeout=60)
        self.assertEqual(status, "cancelled", message)
        self.assertLess(time.monotonic() - started, 30)
        self.assertFalse(logic.isRunning())
        self.assertIsNone(p.outputSCT)
        tempRoot = pathlib.Path(slicer.app.temporaryPath) / "MRtoCTSynthesis"
        self.assertFalse(any(tempRoot.glob("synthesize-*")), "temporary files were left behind")
        self.delayDisplay("Cancel test passed")
