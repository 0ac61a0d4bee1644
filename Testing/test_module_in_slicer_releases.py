"""The Slicer module run against Slicer's own Python sources of 5.6.2, 5.8.1, 5.10.0 and 5.12.3.

``slicer_harness`` loads each release's ``parameterNodeWrapper``, ``ScriptedLoadableModule``, ``util`` and
``i18n`` (``packaging`` in 5.12) from ``../shared/slicer-reference``, with slicer-core's real MRML scene and
small doubles for qt/ctk/Slicer widgets. These tests import ``MRtoCTSynthesis.py``, build its panel from the
real ``.ui`` file, bind the parameter node, and press Apply on the bundled demo case: the engine runs for real
(2 steps, 2 samples) and the outputs are loaded into the scene.

Skipped, with the reason, when ``../shared/slicer-reference`` or slicer-core is not there (a user's clone).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import SimpleITK as sitk
import slicer_harness as harness

from MRtoCTSynthesisLib.slicer import bridge as sb
from MRtoCTSynthesisLib.slicer import mrml as glue

UI_FILE = harness.MODULE_DIR / "Resources" / "UI" / "MRtoCTSynthesis.ui"


def _require(release):
    if harness.reference_sources(release) is None:
        pytest.skip(f"Slicer {release} sources not found in {harness.REFERENCE_DIR} (they live beside the "
                    "repository in ../shared/slicer-reference, which a user's clone does not have)")
    try:
        importlib.metadata.version("slicer-core")
        import slicer_core  # noqa: F401
    except (importlib.metadata.PackageNotFoundError, ImportError) as exc:
        pytest.skip(f"slicer-core is not installed (pip install slicer-core==5.13.31053.0): {exc}")


@pytest.fixture(params=harness.RELEASES)
def slicer_release(request, tmp_path, monkeypatch):
    release = request.param
    _require(release)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with harness.slicer_environment(release, temp_dir=str(tmp_path)) as slicer:
        yield slicer


def _ui_bindings():
    """{parameter: (widget name, class)} from the .ui file itself."""
    out = {}
    for w in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.findtext("string")] = (w.get("name"), w.get("class"))
    return out


def _panel():
    module = harness.import_module_file()
    return module, harness.make_module_widget(module)


def _load_demo_case(slicer):
    nodes = []
    for (name, label), cls in zip(sb.DEMO_CASE_FILES, ("vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeNode",
                                                       "vtkMRMLLabelMapVolumeNode")):
        array, matrix = sb.array_and_ijk_to_ras_from_sitk(sitk.ReadImage(str(sb.DEMO_CASE_DIR / name)))
        nodes.append(glue.volume_node_from_array(slicer.mrmlScene, array, matrix, name=label, class_name=cls))
    return nodes


def _wait(slicer, logic, timeout=300):
    deadline = time.monotonic() + timeout
    while logic.isRunning():
        assert time.monotonic() < deadline, "the engine did not finish in time"
        slicer.app.processEvents()
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------ tests
def test_every_bound_widget_gets_a_connector(slicer_release):
    module, widget = _panel()
    p = widget._parameterNode
    connectors = harness.bound_connectors(p)
    expected = _ui_bindings()
    assert len(expected) == 20
    assert set(connectors) == set(expected), sorted(set(expected) ^ set(connectors))
    for name, connector in connectors.items():
        widget_name, cls = expected[name]
        assert connector.widget() is getattr(widget.ui, widget_name), name
        assert type(connector.widget()).__name__ == cls, name  # the .ui class, exactly (connectors compare types)
    assert type(connectors["method"]) is module.DynamicChoiceComboBoxConnector
    assert type(connectors["sampler"]) is module.DynamicChoiceComboBoxConnector


def test_widgets_and_parameter_node_follow_each_other(slicer_release):
    _, widget = _panel()
    p, ui = widget._parameterNode, widget.ui
    ui.samplesSpinBox.value = 7
    assert p.samples == 7
    p.seed = 1234
    assert ui.seedSpinBox.value == 1234
    ui.keepTemporaryFilesCheckBox.checked = True
    assert p.keepTemporaryFiles is True
    # the method combo drives the sampler list: only samplers that work with the method are offered
    for method in ("ddmm_synth", "ddpm"):
        ui.methodComboBox.currentIndex = ui.methodComboBox.findData(method)
        assert p.method == method
        offered = [ui.samplerComboBox.itemData(i) for i in range(ui.samplerComboBox.count)]
        assert offered == sb.valid_samplers(method, widget.logic.engineInfo())
        assert p.sampler in offered
    # disconnecting (leaving the module) stops the binding
    widget.exit()
    widget.parent.isEntered = False  # as Slicer's module panel does on leaving
    ui.samplesSpinBox.value = 3
    assert p.samples == 7


@pytest.mark.slow
def test_apply_runs_the_engine_and_loads_the_outputs(slicer_release):
    slicer = slicer_release
    _, widget = _panel()
    p, ui = widget._parameterNode, widget.ui
    mri, ct, mask = _load_demo_case(slicer)
    # the MRI sits in a patient/study of the subject hierarchy; the body mask is a segmentation (as from
    # TotalSegmentator), made from the phantom's label map
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Phantom patient"), "MR study")
    sh.CreateItem(study, mri)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Body")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(mask, segmentation)
    assert not ui.applyButton.enabled or p.inputMRI is None
    ui.inputMRISelector.setCurrentNode(mri)
    ui.referenceCTSelector.setCurrentNode(ct)
    ui.bodyMaskSelector.setCurrentNode(segmentation)
    assert (p.inputMRI, p.referenceCT, p.bodyMask) == (mri, ct, segmentation)
    ui.methodComboBox.currentIndex = ui.methodComboBox.findData("ddpm")
    ui.samplerComboBox.currentIndex = ui.samplerComboBox.findData("dpmpp")
    ui.stepsSpinBox.value = 2
    ui.samplesSpinBox.value = 2
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findData("cpu")
    assert (p.method, p.sampler, p.steps, p.samples, p.device) == ("ddpm", "dpmpp", 2, 2, "cpu")
    assert ui.applyButton.enabled, ui.applyButton.toolTip

    ui.applyButton.click()
    assert widget.logic.isRunning()
    assert ui.applyButton.text == "Cancel"
    _wait(slicer, widget.logic)
    assert ui.applyButton.text == "Apply"
    status, message = widget.logic._lastResult
    assert status == "ok", message + "\n" + ui.logTextEdit.plainText

    # outputs: on the MRI's grid, std >= 0 and not all zero, difference = sCT - CT, a metrics table
    mri_array, mri_matrix = glue.array_and_matrix_from_node(mri)
    for node in (p.outputSCT, p.outputStd, p.outputDifference):
        assert node is not None and slicer.mrmlScene.IsNodePresent(node)
        array, matrix = glue.array_and_matrix_from_node(node)
        assert array.shape == mri_array.shape
        np.testing.assert_array_equal(matrix, mri_matrix)
    sct, _ = glue.array_and_matrix_from_node(p.outputSCT)
    std, _ = glue.array_and_matrix_from_node(p.outputStd)
    diff, _ = glue.array_and_matrix_from_node(p.outputDifference)
    ct_array, _ = glue.array_and_matrix_from_node(ct)
    assert np.isfinite(sct).all() and std.min() >= 0 and std.max() > 0
    np.testing.assert_allclose(diff, sct - ct_array.astype(np.float32), atol=1e-3)
    # the sCT is a CT: air around the body, soft tissue inside (independent of the engine: the phantom's mask)
    mask_array, _ = glue.array_and_matrix_from_node(mask)
    assert np.median(sct[mask_array == 0]) < -500 and -300 < np.median(sct[mask_array > 0]) < 400
    rows = dict(glue.table_rows(p.metricsTable))
    assert {"MAE (HU)", "ME (HU)", "PSNR (dB)", "SSIM"} <= set(rows)
    inside = mask_array > 0
    mae = float(np.abs(sct[inside] - ct_array[inside]).mean())
    assert float(rows["MAE (HU)"]) == pytest.approx(mae, abs=0.1)  # the engine's MAE, recomputed here
    assert "Synthetic CT done." in ui.statusLabel.text
    # read at once: outputs named after the MRI in a folder under its study; CT window; colour tables
    folder = sh.GetItemParent(sh.GetItemByDataNode(p.outputSCT))
    assert sh.GetItemName(folder) == f"{mri.GetName()} synthetic CT" and sh.GetItemParent(folder) == study
    for node in (p.outputStd, p.outputDifference, p.metricsTable):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == folder
    assert p.outputSCT.GetName().startswith(mri.GetName())
    display = p.outputSCT.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == sb.CT_WINDOW_PRESETS["soft tissue"]
    ui.ctWindowComboBox.currentIndex = ui.ctWindowComboBox.findData("bone")
    assert (display.GetWindow(), display.GetLevel()) == sb.CT_WINDOW_PRESETS["bone"]
    assert (ct.GetDisplayNode().GetWindow(), ct.GetDisplayNode().GetLevel()) == sb.CT_WINDOW_PRESETS["bone"]
    diverging = slicer.mrmlScene.GetNodeByID(p.outputDifference.GetDisplayNode().GetColorNodeID())
    low, mid, high = ([0.0] * 4 for _ in range(3))
    diverging.GetColor(0, low)
    diverging.GetColor(diverging.GetNumberOfColors() // 2, mid)
    diverging.GetColor(diverging.GetNumberOfColors() - 1, high)
    assert low[2] > low[0] and high[0] > high[2] and min(mid[:3]) > 0.9  # blue, white at 0 HU, red
    assert p.outputDifference.GetDisplayNode().GetWindowLevelMin() == -sb.DIFFERENCE_RANGE_HU
    sequential = slicer.mrmlScene.GetNodeByID(p.outputStd.GetDisplayNode().GetColorNodeID())
    first, last = [0.0] * 4, [0.0] * 4
    sequential.GetColor(0, first)
    sequential.GetColor(sequential.GetNumberOfColors() - 1, last)
    assert sum(first[:3]) < 0.1 < 2.5 < sum(last[:3])  # dark for small std, bright for large


@pytest.mark.slow
def test_register_button_registers_rigidly_and_reports_the_quality(slicer_release):
    """Register MRI to CT from the panel (issue 18): rigid is the default mode, the registered MRI becomes the
    input MRI, and the status shows the engine's quality numbers (from its --json) and any warning."""
    slicer = slicer_release
    _, widget = _panel()
    p, ui = widget._parameterNode, widget.ui
    mri, ct, _ = _load_demo_case(slicer)
    assert p.registrationMode == "rigid" and ui.registrationModeComboBox.currentText == "rigid"
    ui.inputMRISelector.setCurrentNode(mri)
    ui.referenceCTSelector.setCurrentNode(ct)
    assert ui.registerButton.enabled
    ui.registerButton.click()
    _wait(slicer, widget.logic)
    status, message = widget.logic._lastResult
    assert status == "ok", message + "\n" + ui.logTextEdit.plainText
    registered = p.registeredMRI
    assert registered is not None and p.inputMRI == registered and registered != mri
    # the registered MRI is on the CT's grid (the engine resamples onto the fixed image)
    reg_array, reg_matrix = glue.array_and_matrix_from_node(registered)
    ct_array, ct_matrix = glue.array_and_matrix_from_node(ct)
    assert reg_array.shape == ct_array.shape
    np.testing.assert_allclose(reg_matrix, ct_matrix, atol=1e-4)
    assert "Registration (rigid): Mattes MI" in message and "edge correlation" in message
    assert "Registration quality: not available" not in message


def test_slicers_process_never_imports_torch():
    """Import the module, build the panel (which asks the engine for its methods and devices) and read the lists:
    torch loads only in the engine's own process, never in Slicer's (here: a fresh interpreter)."""
    release = harness.RELEASES[-1]
    _require(release)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import slicer_harness as h\n"
        f"with h.slicer_environment({release!r}) as slicer:\n"
        "    w = h.make_module_widget(h.import_module_file())\n"
        "    methods = [w.ui.methodComboBox.itemData(i) for i in range(w.ui.methodComboBox.count)]\n"
        "    devices = [w.ui.deviceComboBox.itemData(i) for i in range(w.ui.deviceComboBox.count)]\n"
        "    info = w.logic.engineInfo()\n"
        "    print('RESULT', info is not None, 'ddpm' in methods, devices[0], devices[-1], 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(harness.REPO / "Testing")], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=str(harness.REPO))
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    assert line[0].split()[1:] == ["True", "True", "auto", "cpu", "False"], line[0]


def test_the_method_picked_is_the_method_run(slicer_release):
    """The method combo filters the models; a checkpoint of another method disables Apply and says why."""
    slicer = slicer_release
    _, widget = _panel()
    p, ui = widget._parameterNode, widget.ui
    mri, _, _ = _load_demo_case(slicer)
    ui.inputMRISelector.setCurrentNode(mri)
    ui.methodComboBox.currentIndex = ui.methodComboBox.findData("ddpm")
    assert ui.applyButton.enabled and not ui.applyReasonLabel.text
    models = [ui.modelComboBox.itemData(i) for i in range(ui.modelComboBox.count)]
    assert models == ["demo_ddpm", "default_ddpm", ""]  # the ddpm models of the catalog, then 'Other file'
    assert ui.modelComboBox.currentData == "default_ddpm"  # the default model
    # SynDiff with the DDPM demo model: Apply is disabled and the reason names both methods
    ui.methodComboBox.currentIndex = ui.methodComboBox.findData("syndiff")
    assert [ui.modelComboBox.itemData(i) for i in range(ui.modelComboBox.count)] == ["demo_syndiff", ""]
    assert not ui.applyButton.enabled
    assert "'ddpm' checkpoint" in ui.applyReasonLabel.text and "'syndiff'" in ui.applyReasonLabel.text
    assert ui.applyButton.toolTip == ui.applyReasonLabel.text
    with pytest.raises(ValueError, match="checkpoint"):  # scripts get the same check
        widget.logic.synthesize(p)
    # picking the SynDiff model fixes it; its samplers are SynDiff's only
    ui.modelComboBox.currentIndex = ui.modelComboBox.findData("demo_syndiff")
    assert p.modelPath == sb.ASSETS_DIR / "demo_syndiff.safetensors"
    assert ui.applyButton.enabled and ui.applyReasonLabel.text == ""
    assert [ui.samplerComboBox.itemData(i) for i in range(ui.samplerComboBox.count)] == ["syndiff"]
    # DDMM-Synth runs on DDPM checkpoints but needs a reference CT
    ui.methodComboBox.currentIndex = ui.methodComboBox.findData("ddmm_synth")
    ui.modelComboBox.currentIndex = ui.modelComboBox.findData("demo_ddpm")
    assert not ui.applyButton.enabled and "reference CT" in ui.applyReasonLabel.text
    assert sb.method_run_matches("ddmm_synth", "ddmm_synth_noise") and not sb.method_run_matches("ddpm", "syndiff")


@pytest.fixture
def model_server():
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(sb.ASSETS_DIR))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_model_manager_downloads_into_the_cache(slicer_release, model_server, tmp_path):
    """A downloadable catalog model: Apply waits for it, Download fetches and verifies it, then it is the model."""
    import qt

    slicer = slicer_release
    qt.QSettings().setValue("MRtoCTSynthesis/ModelCacheDir", str(tmp_path / "cache"))
    module, widget = _panel()
    p, ui, logic = widget._parameterNode, widget.ui, widget.logic
    entry = dict(logic.modelEntry("demo_ddpm"), name="remote_ddpm", title="Remote DDPM", bundled=False,
                 url=f"{model_server}/demo_ddpm.safetensors", availability="downloadable")
    entry.pop("path")
    logic._catalog = logic.modelCatalog() + [entry]
    widget._modelItemsMethod = None
    mri, _, _ = _load_demo_case(slicer)
    ui.inputMRISelector.setCurrentNode(mri)
    index = ui.modelComboBox.findData("remote_ddpm")
    assert "download, 2.4 MB" in ui.modelComboBox.itemText(index)
    ui.modelComboBox.currentIndex = index
    assert not ui.applyButton.enabled and "Download the model 'Remote DDPM' first" in ui.applyReasonLabel.text
    assert ui.downloadModelButton.visible and ui.downloadModelButton.enabled
    ui.downloadModelButton.click()
    assert ui.downloadModelButton.text == "Cancel download" and ui.downloadProgressBar.visible
    deadline = time.monotonic() + 60
    while widget._download is not None:
        assert time.monotonic() < deadline
        slicer.app.processEvents()
        time.sleep(0.05)
    cached = tmp_path / "cache" / f"remote_ddpm-{entry['sha256'][:12]}.safetensors"
    assert p.modelPath == cached and cached.read_bytes() == sb.DEMO_MODEL.read_bytes()
    assert ui.applyButton.enabled and "Downloaded and verified" in ui.statusLabel.text
    assert ui.modelComboBox.currentData == "remote_ddpm" and "(downloaded)" in ui.modelComboBox.currentText
    assert not ui.downloadModelButton.visible


def test_choices_are_remembered_across_sessions(slicer_release):
    """Model, method, sampler, steps, samples and device come back in a new scene (qt.QSettings)."""
    slicer = slicer_release
    _, widget = _panel()
    ui = widget.ui
    ui.methodComboBox.currentIndex = ui.methodComboBox.findData("ddmm_synth")
    ui.samplerComboBox.currentIndex = ui.samplerComboBox.findData("dpmpp")
    ui.stepsSpinBox.value = 7
    ui.samplesSpinBox.value = 9
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findData("cpu")
    widget.exit()
    widget.cleanup()  # as when Slicer unloads the module: its scene observers go (one panel per module in Slicer)
    widget.parent.isEntered = False
    slicer.mrmlScene.Clear(1)  # singletons too: no parameter node, as after restarting Slicer
    _, again = _panel()
    p = again._parameterNode
    assert (p.method, p.sampler, p.steps, p.samples, p.device) == ("ddmm_synth", "dpmpp", 7, 9, "cpu")
    assert again.ui.samplesSpinBox.value == 9 and again.ui.methodComboBox.currentData == "ddmm_synth"
    # a remembered value that no longer makes sense is skipped, the rest still comes back
    import qt

    qt.QSettings().setValue("MRtoCTSynthesis/samples", "100000")  # outside WithinRange(1, 1000)
    qt.QSettings().setValue("MRtoCTSynthesis/modelPath", "/no/such/model.safetensors")
    again.exit()
    again.cleanup()
    again.parent.isEntered = False
    slicer.mrmlScene.Clear(1)
    _, third = _panel()
    assert third._parameterNode.samples == 5 and third._parameterNode.steps == 7
    assert third._parameterNode.modelPath == sb.DEFAULT_MODEL  # the default model


def test_engine_output_is_read_as_utf8(slicer_release):
    module, widget = _panel()
    popen = widget.logic._launch([sys.executable, "-c", "import sys; sys.stdout.buffer.write("
                                  "'σ_n = 0.05, Özbey ✓\\n'.encode('utf-8'))"])
    proc = sb.EngineProcess(popen)
    assert proc.wait(60) == 0
    assert proc.output() == "σ_n = 0.05, Özbey ✓"


@pytest.mark.slow
def test_cancel_kills_the_engine_and_loads_nothing(slicer_release):
    slicer = slicer_release
    _, widget = _panel()
    p, ui, logic = widget._parameterNode, widget.ui, widget.logic
    mri, _, _ = _load_demo_case(slicer)
    ui.inputMRISelector.setCurrentNode(mri)
    ui.samplerComboBox.currentIndex = ui.samplerComboBox.findData("ddpm")
    ui.stepsSpinBox.value = 1000
    ui.samplesSpinBox.value = 4
    ui.applyButton.click()
    process = logic._process
    deadline = time.monotonic() + 15  # let the engine load torch and the model and start sampling
    while ui.progressBar.value == 0 and time.monotonic() < deadline:
        slicer.app.processEvents()
        time.sleep(0.05)
    assert logic.isRunning()
    ui.applyButton.click()  # the Apply button is Cancel while running
    _wait(slicer, logic, timeout=60)
    status, message = logic._lastResult
    assert status == "cancelled", message
    assert p.outputSCT is None and p.outputStd is None
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 3  # the inputs only
    assert process.popen.poll() is not None
    assert not list((harness.Path(slicer.app.temporaryPath) / "MRtoCTSynthesis").glob("synthesize-*"))


def test_a_failed_install_is_a_message_in_the_panel(slicer_release, monkeypatch):
    """pip failing (no network, a conflict...) must end as text in the panel, not as an exception or a run."""
    slicer = slicer_release
    _, widget = _panel()
    ui, logic = widget.ui, widget.logic
    mri, _, _ = _load_demo_case(slicer)
    ui.inputMRISelector.setCurrentNode(mri)
    calls = []

    def failing_install(*args, **kwargs):
        calls.append(args)
        raise subprocess.CalledProcessError(1, ["pip", "install"], "ERROR: No matching distribution found")

    monkeypatch.setattr(logic, "missingDependencies", lambda needTorch=True: (["scipy>=99"], needTorch))
    monkeypatch.setattr(slicer.util, "pip_install", failing_install)
    if hasattr(slicer, "packaging"):  # 5.12: pip_ensure is the way in
        monkeypatch.setattr(slicer.packaging, "pip_ensure", failing_install)
    ui.applyButton.click()
    assert calls, "nothing was installed"
    assert not logic.isRunning()
    assert "Installing the Python packages the engine needs failed" in ui.statusLabel.text
    assert "returned non-zero exit status 1" in ui.statusLabel.text


@pytest.mark.slow
def test_apply_to_all_mris_runs_a_queue(slicer_release):
    """Two loaded MRIs, one press: each gets its own sCT and std, named after it; outputs are never queued."""
    slicer = slicer_release
    if slicer.release != harness.RELEASES[-1]:
        pytest.skip("the queue is the module's own logic; one release (the newest) is enough for two engine runs")
    _, widget = _panel()
    p, ui, logic = widget._parameterNode, widget.ui, widget.logic
    mri, ct, _ = _load_demo_case(slicer)
    array, matrix = glue.array_and_matrix_from_node(mri)
    second = glue.volume_node_from_array(slicer.mrmlScene, array[::-1].copy(), matrix, name="Second MRI")
    ui.referenceCTSelector.setCurrentNode(ct)
    ui.samplerComboBox.currentIndex = ui.samplerComboBox.findData("dpmpp")
    ui.stepsSpinBox.value = 2
    ui.samplesSpinBox.value = 2
    assert logic.queueCandidates(p) == [mri, second]  # not the CT, not the label map
    assert ui.queueButton.enabled and "2 MRIs" in ui.queueButton.text
    ui.queueButton.click()
    assert "Queue: 1 of 2" in ui.statusLabel.text
    deadline = time.monotonic() + 600
    while logic.isRunning() or widget._queue:
        assert time.monotonic() < deadline
        slicer.app.processEvents()
        time.sleep(0.05)
    assert logic._lastResult[0] == "ok", logic._lastResult
    for source in (mri, second):
        sct = slicer.mrmlScene.GetFirstNodeByName(f"{source.GetName()}_sCT")
        std = slicer.mrmlScene.GetFirstNodeByName(f"{source.GetName()}_sCT_std")
        assert sct is not None and std is not None, source.GetName()
        assert glue.array_and_matrix_from_node(sct)[0].shape == array.shape
    assert logic.queueCandidates(p) == [mri, second]  # the four outputs are not MRIs to queue


def test_the_modules_self_test_runs_here_where_it_can(slicer_release):
    """MRtoCTSynthesisTest is meant for a running Slicer; its steps that need no layout or Sample Data run here."""
    slicer = slicer_release
    module = harness.import_module_file()
    test = module.MRtoCTSynthesisTest()
    test.delayDisplay = lambda *args, **kwargs: None
    test._loadDemoCase = lambda: tuple(_load_demo_case(slicer))
    test.setUp()
    test.test_method_and_model_must_agree()


def test_the_lib_side_of_the_module_is_bound_to_this_release(slicer_release):
    """The logic and self-test bodies (MRtoCTSynthesisLib.slicer.logic/selftest) import Slicer's modules, so each
    release imports them afresh; the module file's thin classes keep Slicer's names, and unittest (Reload & Test,
    slicer_add_python_unittest) finds exactly one TestCase class in the module file."""
    import unittest

    slicer = slicer_release
    module = harness.import_module_file()
    for lib in (module.engine_logic, module.module_selftest):
        assert lib.slicer is slicer, f"{lib.__name__} still holds another release's slicer"
        assert sys.modules[lib.__name__] is lib
    assert issubclass(module.MRtoCTSynthesisLogic, slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic)
    assert issubclass(module.MRtoCTSynthesisTest, slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest)
    logic = module.MRtoCTSynthesisLogic()
    assert logic.moduleName == "MRtoCTSynthesis"  # the parameter node's tag comes from the class name
    assert isinstance(logic.getParameterNode(), module.MRtoCTSynthesisParameterNode)

    def cases(suite):
        for item in suite:
            yield from cases(item) if isinstance(item, unittest.TestSuite) else [item]

    found = list(cases(unittest.TestLoader().loadTestsFromModule(module)))
    assert {type(case) for case in found} == {module.MRtoCTSynthesisTest}
    assert {"test_registration", "test_synthesis_with_metrics", "test_cancel"} <= {c._testMethodName for c in found}


def test_reload_rereads_the_logic_and_self_test_bodies(slicer_release, monkeypatch):
    """Developer mode's Reload (slicer.util.reloadScriptedModule) re-reads the module file only; the widget reloads
    the Lib bodies first, so that the reloaded Logic/Test classes subclass the new code, as before the split."""
    slicer = slicer_release
    module, widget = _panel()
    old_logic, old_test = module.engine_logic.EngineLogic, module.module_selftest.SelfTest
    reloaded = []

    def reload_module_file(name):  # what reloadScriptedModule does with the file (the panel rebuild is left out)
        reloaded.append((name, harness.import_module_file()))

    monkeypatch.setattr(slicer.util, "reloadScriptedModule", reload_module_file)
    widget.onReload()
    assert [name for name, _ in reloaded] == ["MRtoCTSynthesis"]
    new = reloaded[0][1]
    assert new.engine_logic.EngineLogic is not old_logic and new.module_selftest.SelfTest is not old_test
    assert new.MRtoCTSynthesisLogic.__bases__ == (new.engine_logic.EngineLogic,)
    assert new.MRtoCTSynthesisTest.__bases__ == (new.module_selftest.SelfTest,)
    assert new.engine_logic.slicer is slicer
