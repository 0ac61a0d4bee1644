"""A cancelled synthesis writes nothing and lets go of its tensors; the same seed gives the same sCT.

* Cancel through the real command line: ``mrtoct synthesize`` in a subprocess gets SIGINT (Ctrl-C) or
  SIGTERM (the Slicer module's Cancel) after its first PROGRESS line; it must exit with status 130, say
  that nothing was written, leave no output or temporary file and keep an existing output intact.
* Cancel in-process (the ``cancel`` callback of :func:`synthesize`): after the CancelledError no
  reference to the condition slices, the samples or the running moments survives (and, on CUDA, the
  device memory goes back to where it was).
* Determinism: the same seed, inputs and device give a bit-identical sCT and std through the CLI, for a
  diffusion model, SynDiff and DDMM-Synth with simulated measurement noise; another seed gives another sCT.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.errors import CancelledError
from MRtoCTSynthesisLib.io.volume import read_volume
from MRtoCTSynthesisLib.models.methods import create_model, save_model
from MRtoCTSynthesisLib.pipeline import synthesis as inference
from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize

PREVIOUS = b"previous uncertainty map - must survive a cancelled run"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 16x16x8 MRI, a CT in HU on its grid, and untrained 16-pixel ddpm and syndiff checkpoints."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(3)
    mr = sitk.GetImageFromArray(rng.uniform(0, 600, (8, 16, 16)).astype(np.float32))
    ct_arr = np.full((8, 16, 16), -1000.0, np.float32)
    ct_arr[:, 3:13, 3:13] = rng.uniform(-50, 1500, (8, 10, 10))
    ct = sitk.GetImageFromArray(ct_arr)
    for img in (mr, ct):
        img.SetSpacing((1.5, 1.5, 4.0))
        img.SetOrigin((10.0, -5.0, 2.0))
    sitk.WriteImage(mr, str(d / "mr.nii.gz"))
    sitk.WriteImage(ct, str(d / "ct.nii.gz"))
    torch.manual_seed(0)
    out = {"mr": str(d / "mr.nii.gz"), "ct": str(d / "ct.nii.gz")}
    for method in ("ddpm", "syndiff"):
        out[method] = str(save_model(create_model(method, 16), d / f"{method}.safetensors"))
    return out


# ------------------------------------------------------------------------------------------ cancel: CLI
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_synthesis_writes_nothing(inputs, tmp_path, sig):
    out_ct, out_std = tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz"
    out_std.write_bytes(PREVIOUS)
    argv = [sys.executable, "-m", "MRtoCTSynthesisLib.apps.cli", "synthesize", "--mri", inputs["mr"],
            "--model", inputs["ddpm"], "--out-ct", str(out_ct), "--out-std", str(out_std),
            "--sampler", "ddpm", "--steps", "150", "--batch-size", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # a job started in the background of a non-interactive shell inherits SIGINT as ignored: undo that, so
    # the engine sees Ctrl-C as a user does
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace", env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        err_lines, t0 = [], time.monotonic()
        for line in proc.stderr:
            err_lines.append(line)
            if line.startswith("PROGRESS"):
                break
            assert time.monotonic() - t0 < 120, "no PROGRESS line within 120 s"
        assert err_lines and err_lines[-1].startswith("PROGRESS"), "".join(err_lines)
        proc.send_signal(sig)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(err_lines) + rest
    assert proc.returncode == 130, err
    assert "cancelled" in err and "no output was written" in err, err
    assert "Traceback" not in err, err
    assert "synthetic CT:" not in out
    assert not out_ct.exists()
    assert out_std.read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["std.nii.gz"]  # no temporary files either


# ------------------------------------------------------------------------------------------ cancel: in-process
class _Recorder:
    """Wraps a loaded model; keeps only weak references to every condition batch and sample it sees."""

    def __init__(self, model):
        self._model = model
        self.refs: list[weakref.ref] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def to(self, device):
        self._model.to(device)
        return self

    def sample(self, cond, sampler, **kw):
        self.refs.append(weakref.ref(cond))
        out = self._model.sample(cond, sampler, **kw)
        self.refs.append(weakref.ref(out.x0))
        return out


def test_cancel_callback_releases_tensors(inputs, monkeypatch, one_torch_thread):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _Recorder(create_model("ddpm", 16))
    moments = []

    class RecordedMoments(inference.RunningMoments):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            moments.append(weakref.ref(self))

    monkeypatch.setattr(inference, "RunningMoments", RecordedMoments)
    mri = read_volume(inputs["mr"])
    polls = {"n": 0}

    def cancel():  # stop in the middle of the second batch's sampling loop
        polls["n"] += 1
        return polls["n"] > 12

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
    cancelled = False
    try:
        synthesize(mri, model, SynthesisOptions(sampler="ddim", steps=10, batch_size=2, device=device),
                          cancel=cancel)
    except CancelledError:
        cancelled = True  # the exception (and its traceback's frames) is dropped when this block ends
    assert cancelled
    assert len(model.refs) >= 3 and moments  # one batch finished, the second was running
    gc.collect()
    alive = [r for r in model.refs + moments if r() is not None]
    assert alive == [], f"{len(alive)} tensors/buffers still referenced after the cancel"
    if device == "cuda":
        model._model.to("cpu")
        gc.collect()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= baseline


# ------------------------------------------------------------------------------------------ determinism
RUNS = {
    "ddpm-dpmpp": lambda i: ["--model", i["ddpm"], "--sampler", "dpmpp", "--steps", "2", "--samples", "2"],
    "ddpm-ancestral": lambda i: ["--model", i["ddpm"], "--sampler", "ddpm", "--steps", "2", "--samples", "2"],
    "syndiff": lambda i: ["--model", i["syndiff"], "--samples", "2"],
    "ddmm_synth-noisy": lambda i: ["--model", i["ddpm"], "--sampler", "ddim", "--steps", "2", "--samples", "2",
                                   "--ct", i["ct"], "--projections", "8", "--noise-sigma", "0.5"],
}


@pytest.mark.parametrize("run", list(RUNS), ids=list(RUNS))
def test_same_seed_same_sct_other_seed_differs(inputs, tmp_path, run, capsys, one_torch_thread):
    def synth(seed, name):
        ct, std = tmp_path / f"{name}_sct.nrrd", tmp_path / f"{name}_std.nrrd"
        assert main(["synthesize", "--mri", inputs["mr"], "--out-ct", str(ct), "--out-std", str(std),
                     "--device", "cpu", "--seed", str(seed), *RUNS[run](inputs)]) == 0, capsys.readouterr().err
        return [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (ct, std)]

    a, b, c = synth(11, "a"), synth(11, "b"), synth(12, "c")
    np.testing.assert_array_equal(a[0], b[0])  # bit-identical sCT
    np.testing.assert_array_equal(a[1], b[1])  # and uncertainty map
    assert np.abs(a[0] - c[0]).max() > 1.0, "another seed should give another sample"
    assert a[1].max() > 0  # two Monte-Carlo samples really differ from each other
