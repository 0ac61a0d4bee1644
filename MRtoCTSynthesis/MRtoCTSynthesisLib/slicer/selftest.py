"""The Slicer module's self-test: registration, synthesis, DDMM-Synth, engine errors and cancel on the phantom.

This is the body of ``MRtoCTSynthesisTest`` (the module file, ``MRtoCTSynthesis.py``, keeps a thin subclass
under that name, which Slicer's Reload & Test and ``slicer_add_python_unittest`` look up). It runs inside Slicer;
``Testing/test_module_in_slicer_releases.py`` runs the steps that need no layout or Sample Data against each
Slicer release's Python sources.
"""

import logging
import pathlib
import time

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from . import bridge as slicer_bridge
from . import mrml as mrml_glue


class SelfTest(ScriptedLoadableModuleTest):
    """Tests inside Slicer on the bundled phantom case: registration, synthesis with few steps, geometry,
    metrics, engine errors and cancel. Run them from the Reload & Test button or with
    ``Slicer --python-code "import MRtoCTSynthesis; MRtoCTSynthesis.MRtoCTSynthesisTest().runTest()"``.

    The module file's ``MRtoCTSynthesisTest`` subclasses this and sets :attr:`logicClass` (its
    ``MRtoCTSynthesisLogic``) and :attr:`registerSampleData` (its Sample Data registration).
    """

    TIMEOUT_S = 900
    #: the module's logic class (``MRtoCTSynthesisLogic``); set by the subclass in the module file
    logicClass = None
    #: the module's ``registerSampleData`` function, as a staticmethod; set by the subclass in the module file
    registerSampleData = None

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

            self.registerSampleData()
            nodes = SampleData.SampleDataLogic().downloadSamples("MRtoCTPhantom")
        except Exception as exc:
            logging.warning("Sample Data could not load the demo case (%s); loading the files directly", exc)
        if not nodes or len(nodes) < 3:
            nodes = [slicer.util.loadVolume(str(f)) for f in files]
        mri, ct, mask = nodes[:3]
        return mri, ct, mask

    def _parameters(self, mri, ct=None, mask=None, **values):
        logic = self.logicClass()
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
        logic = self.logicClass()
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
        from ..apps.cli import build_parser

        synthesize = next(a for a in build_parser()._actions
                          if a.__class__.__name__ == "_SubParsersAction").choices["synthesize"]
        if "--projections" not in synthesize._option_string_actions:
            self.skipTest("this engine's `mrtoct synthesize` has no DDMM-Synth options yet")
        self.assertIn("ddmm_synth", slicer_bridge.methods(self.logicClass().engineInfo()))
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
