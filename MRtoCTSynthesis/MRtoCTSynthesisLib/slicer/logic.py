"""The Slicer module's logic: runs the engine's ``mrtoct`` command line in a separate process and loads its results.

This is the body of ``MRtoCTSynthesisLogic`` (the module file, ``MRtoCTSynthesis.py``, keeps a thin subclass
under that name, which Slicer looks up). It imports Slicer's ``slicer`` and ``qt``, so it only loads inside
Slicer (or the test harness, ``Testing/slicer_harness.py``, which re-imports it for each Slicer release). The
parts that run without Slicer are in :mod:`.bridge` (command lines, progress and error parsing, geometry),
:mod:`.mrml` (arrays and matrices in and out of MRML nodes) and :mod:`.downloads` (the model cache).
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
from typing import Optional

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import bridge as slicer_bridge
from . import downloads as model_downloads
from . import mrml as mrml_glue

#: the folder of ``MRtoCTSynthesis.py`` (the engine runs from there) and of its ``Resources``
MODULE_DIR = slicer_bridge.MODULE_DIR
RESOURCES_DIR = MODULE_DIR / "Resources"
#: the torch the engine supports (pyproject.toml's range); installed into Slicer's Python, never imported by Slicer
TORCH_REQUIREMENT = "torch>=2.1,<2.14"
#: PyTorch's own index of CPU-only wheels (no multi-GB CUDA libraries) for a CPU-only device choice
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class EngineJob:
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


class EngineLogic(ScriptedLoadableModuleLogic):
    """Runs the engine in a separate process and brings its results into the scene.

    It works without the widget. ``synthesize``/``register`` take the parameter node and return at once.
    Progress, log lines and the end are reported through the callbacks, and ``wait=True`` (for tests
    and scripts) keeps processing events until the job ends and returns ``(status, message)``.

    The module file's ``MRtoCTSynthesisLogic`` subclasses this and sets :attr:`parameterNodeClass` (its
    ``@parameterNodeWrapper`` class). Slicer's ``ScriptedLoadableModuleLogic`` takes the module name (the
    parameter node's singleton tag) from the class name, so instantiate that subclass, not this class.
    """

    POLL_INTERVAL_MS = 200
    #: the module's ``@parameterNodeWrapper`` class; set by the subclass in the module file
    parameterNodeClass = None

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
        return self.parameterNodeClass(super().getParameterNode())

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
        outputNode.SetAttribute(EngineLogic.OUTPUT_ATTRIBUTE, name)
        outputNode.SetAndObserveTransformNodeID(gridNode.GetTransformNodeID())
        return outputNode

    def _newTempDir(self, kind: str) -> pathlib.Path:
        base = pathlib.Path(slicer.app.temporaryPath) / "MRtoCTSynthesis"
        base.mkdir(parents=True, exist_ok=True)
        return pathlib.Path(tempfile.mkdtemp(prefix=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=base))

    # ------------------------------------------------------------------------------------------- jobs
    @classmethod
    def _settings(cls, p) -> dict:
        """A snapshot of the parameter node, so that changes to the GUI during a run do not affect it."""
        names = list(cls.parameterNodeClass.allParameters)
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

        job = EngineJob("synthesize", self._newTempDir("synthesize"), s, callbacks)
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
        job = EngineJob("register", self._newTempDir("register"), s, callbacks)
        d = job.tempDir
        try:
            self.writeVolume(mri, d / "mri.nii.gz")
            self.writeVolume(ct, d / "ct.nii.gz")
        except Exception:
            shutil.rmtree(d, ignore_errors=True)
            raise
        argv = slicer_bridge.build_register_command(self.pythonExecutable, d / "ct.nii.gz", d / "mri.nii.gz",
                                                    d / "mri_registered.nii.gz", transform=d / "ct_to_mri.tfm",
                                                    mode=s["registrationMode"], seed=s["seed"],
                                                    json_out=d / "registration.json")

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
            # the engine's ground-truth-free quality checks and its warnings (a blend of CT over MRI is shown above)
            job.notes.extend(slicer_bridge.registration_summary(d / "registration.json"))

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


