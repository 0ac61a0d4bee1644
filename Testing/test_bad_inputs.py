"""Every bad input a user can give the `mrtoct` command line, in one table.

Each case builds its bad input in a temporary folder and runs the CLI in-process. For every case the run
must exit with status 2, print ``error: <problem>`` naming the problem and a ``Fix:`` line, show no
traceback, and write nothing: no output file appears, an existing output file keeps its bytes, and no
temporary file is left behind. Inputs are tiny (16x16x4 volumes, untrained 16-pixel models) and every case
fails before sampling, so the whole table runs in seconds on one thread.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.models.methods import create_model, save_model

SHAPE = (4, 16, 16)  # numpy (z, y, x)
SPACING = (2.0, 2.0, 3.0)
ORIGIN = (-15.0, 20.0, 7.5)
PREVIOUS = b"previous good result - must survive a failed run"


# ------------------------------------------------------------------------------------------ shared inputs
def _image(arr, spacing=SPACING, origin=ORIGIN, direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(np.asarray(arr))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _write(path: Path, img: sitk.Image) -> str:
    sitk.WriteImage(img, str(path))
    return str(path)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A good MRI and a CT in HU on its grid, and untrained 16-pixel checkpoints of three methods."""
    d = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 800, SHAPE).astype(np.float32)
    ct = np.full(SHAPE, -1000.0, np.float32)
    ct[:, 4:12, 4:12] = rng.uniform(0, 1200, (SHAPE[0], 8, 8))
    torch.manual_seed(0)
    paths = {"mr": _write(d / "mr.nii.gz", _image(mr)), "ct": _write(d / "ct.nii.gz", _image(ct)), "dir": d}
    for method in ("ddpm", "unet_cnn", "syndiff"):
        paths[method] = str(save_model(create_model(method, 16), d / f"{method}.safetensors"))
    return paths


@dataclasses.dataclass
class Env:
    """What a case builder gets: the shared good inputs, a scratch folder and the output folder."""

    good: dict
    tmp: Path
    out: Path

    def synth(self, *extra, mri=None, model=None, outputs=True):
        argv = ["synthesize", "--mri", str(mri or self.good["mr"]), "--model", str(model or self.good["ddpm"])]
        if outputs:
            argv += ["--out-ct", str(self.out / "sct.nii.gz"), "--out-std", str(self.out / "std.nii.gz")]
        return argv + ["--steps", "1"] * ("--steps" not in extra) + [str(e) for e in extra]

    def ddmm(self, *extra, ct=None, model=None):
        return self.synth("--ct", str(ct or self.good["ct"]), *extra, model=model)

    def register(self, fixed=None, moving=None, *extra):
        return ["register", "--fixed", str(fixed or self.good["ct"]), "--moving", str(moving or self.good["mr"]),
                "--out", str(self.out / "reg.nii.gz"), "--transform", str(self.out / "reg.tfm"), *map(str, extra)]

    def evaluate(self, pred=None, ref=None, *extra):
        return ["evaluate", "--pred", str(pred or self.good["ct"]), "--ref", str(ref or self.good["ct"]),
                "--json", str(self.out / "metrics.json"), *map(str, extra)]

    def bad_volume(self, name, arr=None, img=None, **geometry) -> str:
        return _write(self.tmp / name, img if img is not None else _image(arr, **geometry))

    def mr_array(self):
        return sitk.GetArrayFromImage(sitk.ReadImage(self.good["mr"]))

    def ct_array(self):
        return sitk.GetArrayFromImage(sitk.ReadImage(self.good["ct"]))


# ------------------------------------------------------------------------------------------ bad inputs
def _with_voxel(arr, value, index=(1, 2, 3)):
    arr = np.array(arr, dtype=np.float32)
    arr[index] = value
    return arr


def _dicom_two_series(t: Env) -> str:
    """Two MR series (different SeriesInstanceUID) of three slices each, in one folder."""
    folder = t.tmp / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for s, uid in enumerate(("1.2.826.0.1.3680043.2.1125.11", "1.2.826.0.1.3680043.2.1125.22")):
        vol = _image((np.arange(3 * 8 * 8).reshape(3, 8, 8) * (s + 1)).astype(np.int16), spacing=(1.0, 1.0, 2.0),
                     origin=(0.0, 0.0, 0.0))
        for k in range(3):
            sl = vol[:, :, k]
            sl.SetMetaData("0020|000e", uid)
            sl.SetMetaData("0020|0032", "\\".join(str(v) for v in vol.TransformIndexToPhysicalPoint((0, 0, k))))
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0008|0060", "MR")
            writer.SetFileName(str(folder / f"s{s}_{k:03d}.dcm"))
            writer.Execute(sl)
    return str(folder)


def _unreadable(t: Env) -> str:
    if os.geteuid() == 0:
        pytest.skip("running as root: root reads a file whatever its permissions")
    p = Path(t.bad_volume("locked.nii.gz", t.mr_array()))
    p.chmod(0)
    return str(p)


MARKER_NAME = "PWNED_by_unpickling"


class _Exploit:
    """Unpickling this object would create a marker file (harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _exploit_pt(t: Env, name="exploit.pt", raw_pickle=False) -> str:
    p = t.tmp / name
    payload = {"state_dict": {"denoiser.w": torch.zeros(2)}, "metadata": _Exploit(t.tmp / MARKER_NAME)}
    if raw_pickle:
        p.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, p)
    return str(p)


def _truncated(t: Env) -> str:
    data = Path(t.good["ddpm"]).read_bytes()
    p = t.tmp / "truncated.safetensors"
    p.write_bytes(data[: len(data) * 2 // 3])
    return str(p)


def _truncated_pt(t: Env) -> str:
    p = t.tmp / "truncated.pt"
    torch.save({"state_dict": {"denoiser.w": torch.zeros(1000)}, "metadata": "{}"}, p)
    p.write_bytes(p.read_bytes()[:600])
    return str(p)


def _random_bytes(t: Env, name) -> str:
    p = t.tmp / name
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return str(p)


def _flipped_weight_byte(t: Env) -> str:
    data = bytearray(Path(t.good["ddpm"]).read_bytes())
    data[-100] ^= 0xFF
    p = t.tmp / "flipped.safetensors"
    p.write_bytes(bytes(data))
    return str(p)


def _edited_checkpoint(t: Env, method="ddpm", **conditioning) -> str:
    model = create_model(method, 16)
    model.metadata["conditioning"].update(conditioning)
    return str(save_model(model, t.tmp / "edited.safetensors"))


def _relabelled_checkpoint(t: Env, method: str, as_method: str) -> str:
    model = create_model(method, 16)
    model.metadata["method"] = as_method
    return str(save_model(model, t.tmp / "relabelled.safetensors"))


@dataclasses.dataclass
class Case:
    id: str
    build: Callable[[Env], list]
    needle: str                    # regex the error message must match (case-insensitive)
    outputs: tuple = ()            # extra paths (relative to the output folder) that must not be written


def _phantom(t: Env, *extra):
    return ["phantom", "--out", str(t.out / "phantoms"), "--size", "8", "8", "4", *map(str, extra)]


CASES = [
    # --- MRI file problems (synthesize) --------------------------------------------------------------
    Case("mri-missing", lambda t: t.synth(mri=t.tmp / "missing.nii.gz"), r"MRI file .*missing\.nii\.gz does not exist"),
    Case("mri-unreadable", lambda t: t.synth(mri=_unreadable(t)), r"not readable"),
    Case("mri-empty-folder", lambda t: t.synth(mri=t.tmp), r"folder but holds no DICOM series"),
    Case("mri-dicom-two-series", lambda t: t.synth(mri=_dicom_two_series(t)), r"holds 2 DICOM series"),
    Case("mri-2d", lambda t: t.synth(mri=t.bad_volume("flat.nii.gz", np.ones((16, 16), np.float32))), r"2D image"),
    Case("mri-4d", lambda t: t.synth(mri=t.bad_volume("4d.nrrd", img=sitk.Image([16, 16, 4, 3], sitk.sitkFloat32))),
         r"4D image"),
    Case("mri-rgb",
         lambda t: t.synth(mri=t.bad_volume("rgb.nrrd", img=sitk.Image([16, 16, 4], sitk.sitkVectorUInt8, 3))),
         r"3 components per voxel \(RGB"),
    Case("mri-all-zero", lambda t: t.synth(mri=t.bad_volume("zero.nii.gz", np.zeros(SHAPE, np.float32))),
         r"constant \(0 everywhere\)"),
    Case("mri-constant", lambda t: t.synth(mri=t.bad_volume("const.mha", np.full(SHAPE, 7, np.int16))),
         r"constant \(7 everywhere\)"),
    Case("mri-zero-size", lambda t: t.synth(mri=_nrrd_zero_size(t)), r"could not be read .*size is zero"),
    Case("mri-nan-nrrd", lambda t: t.synth(mri=t.bad_volume("nan.nrrd", _with_voxel(t.mr_array(), np.nan))),
         r"1 NaN/Inf voxels"),
    # ITK's NIfTI reader turns NaN/Inf into 0: the engine looks at the stored values itself
    Case("mri-nan-nifti", lambda t: t.synth(mri=t.bad_volume("nan.nii.gz", _with_voxel(t.mr_array(), np.nan))),
         r"1 NaN/Inf voxels"),
    Case("mri-inf-nifti-f64", lambda t: t.synth(mri=t.bad_volume(
        "inf.nii", _with_voxel(t.mr_array(), -np.inf).astype(np.float64))), r"1 NaN/Inf voxels"),
    Case("mri-inf-mha", lambda t: t.synth(mri=t.bad_volume("inf.mha", _with_voxel(t.mr_array(), np.inf))),
         r"1 NaN/Inf voxels"),
    Case("mri-garbage-bytes", lambda t: t.synth(mri=_random_bytes(t, "garbage.nii.gz")),
         r"could not be read as an image"),
    Case("mri-empty-file", lambda t: t.synth(mri=_touch(t.tmp / "empty.nrrd")), r"could not be read as an image"),
    Case("mri-is-a-checkpoint", lambda t: t.synth(mri=t.good["ddpm"]), r"could not be read as an image"),
    # --- reference CT for DDMM-Synth (--ct) ---------------------------------------------------------
    Case("ct-not-in-hu-0-4095",
         lambda t: t.ddmm(ct=t.bad_volume("raw.nii.gz", (t.ct_array() + 1024).astype(np.uint16))),
         r"does not look like Hounsfield units"),
    Case("ct-constant", lambda t: t.ddmm(ct=t.bad_volume("ctconst.nii.gz", np.full(SHAPE, -1000, np.int16))),
         r"constant"),
    Case("ct-nan", lambda t: t.ddmm(ct=t.bad_volume("ctnan.nrrd", _with_voxel(t.ct_array(), np.nan))), r"NaN/Inf"),
    Case("ct-missing", lambda t: t.ddmm(ct=t.tmp / "noct.nii.gz"), r"does not exist"),
    Case("ct-other-spacing", lambda t: t.ddmm(ct=t.bad_volume("sp.nii.gz", t.ct_array(), spacing=(2.0, 2.0, 3.5))),
         r"different grids:.*spacing 2x2x3\.5"),
    Case("ct-other-origin", lambda t: t.ddmm(ct=t.bad_volume("or.nii.gz", t.ct_array(), origin=(0.0, 0.0, 0.0))),
         r"different grids"),
    Case("ct-other-direction", lambda t: t.ddmm(ct=t.bad_volume("dir.nii.gz", t.ct_array(),
                                                                direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))),
         r"different grids"),
    Case("ct-other-size", lambda t: t.ddmm(ct=t.bad_volume("size.nii.gz", t.ct_array()[:, :, :12])),
         r"different grids:.*size 12x16x4"),
    # --- absurd parameters --------------------------------------------------------------------------
    Case("projections-0", lambda t: t.ddmm("--projections", 0), r"--projections must be a whole number between 1"),
    Case("projections-negative", lambda t: t.ddmm("--projections", -3), r"--projections .* got -3"),
    Case("projections-without-ct", lambda t: t.synth("--projections", 10), r"--projections only make\(s\) sense"),
    Case("noise-sigma-negative", lambda t: t.ddmm("--noise-sigma", -0.1),
         r"--noise-sigma must be a finite number >= 0"),
    Case("noise-sigma-nan", lambda t: t.ddmm("--noise-sigma", "nan"), r"--noise-sigma .* got nan"),
    Case("noise-sigma-inf", lambda t: t.ddmm("--noise-sigma", "inf"), r"--noise-sigma .* got inf"),
    Case("steps-0", lambda t: t.synth("--steps", 0), r"--steps must be >= 1, got 0"),
    Case("steps-not-a-number", lambda t: t.synth("--steps", "ten"), r"--steps must be a whole number"),
    Case("samples-0", lambda t: t.synth("--samples", 0), r"--samples must be >= 1"),
    Case("batch-size-0", lambda t: t.synth("--batch-size", 0), r"--batch-size must be >= 1"),
    Case("seed-negative", lambda t: t.synth("--seed", -1), r"--seed must be between 0 and 2\*\*62"),
    Case("seed-overflow", lambda t: t.synth("--seed", 10 ** 30), r"--seed must be between 0 and 2\*\*62"),
    Case("sampler-unknown", lambda t: t.synth("--sampler", "euler"), r"invalid choice: 'euler'"),
    Case("device-unknown", lambda t: t.synth("--device", "tpu"), r"unknown device 'tpu'"),
    Case("missing-required-argument", lambda t: ["synthesize", "--mri", t.good["mr"]], r"arguments are required"),
    # --- method / sampler / checkpoint mismatches ---------------------------------------------------
    Case("sampler-em-with-syndiff", lambda t: t.synth("--sampler", "em", model=t.good["syndiff"]),
         r"sampler 'em' does not work with method 'syndiff'"),
    Case("sampler-ddpm-with-unet-cnn", lambda t: t.synth("--sampler", "ddpm", model=t.good["unet_cnn"]),
         r"sampler 'ddpm' does not work with method 'unet_cnn'"),
    Case("sampler-direct-with-ddpm", lambda t: t.synth("--sampler", "direct"),
         r"sampler 'direct' does not work with method 'ddpm'"),
    Case("steps-with-unet-cnn", lambda t: t.synth("--steps", 5, model=t.good["unet_cnn"]), r"has no sampling steps"),
    Case("projections-with-unet-cnn", lambda t: t.ddmm("--projections", 10, model=t.good["unet_cnn"]),
         r"DDMM-Synth needs a conditional diffusion checkpoint .* 'unet_cnn'"),
    Case("ckpt-missing", lambda t: t.synth(model=t.tmp / "none.safetensors"), r"checkpoint file not found"),
    Case("ckpt-folder", lambda t: t.synth(model=t.tmp), r"is a folder, not a checkpoint"),
    Case("ckpt-truncated", lambda t: t.synth(model=_truncated(t)), r"cannot be read: the header describes"),
    Case("ckpt-random-bytes", lambda t: t.synth(model=_random_bytes(t, "random.safetensors")),
         r"cannot be read: its header length"),
    Case("ckpt-empty", lambda t: t.synth(model=_touch(t.tmp / "empty.safetensors")), r"has only 0 bytes"),
    Case("ckpt-flipped-weight-byte", lambda t: t.synth(model=_flipped_weight_byte(t)), r"do not match the checksum"),
    Case("ckpt-is-an-image", lambda t: t.synth(model=t.good["mr"]), r"cannot be read"),
    Case("ckpt-pt-random-bytes", lambda t: t.synth(model=_random_bytes(t, "random.pt")), r"was refused"),
    Case("ckpt-pt-truncated", lambda t: t.synth(model=_truncated_pt(t)), r"zip archive is incomplete"),
    Case("ckpt-pt-pickle-exploit", lambda t: t.synth(model=_exploit_pt(t)), r"pickled Python object \(\S*open\)"),
    Case("ckpt-pth-raw-pickle-exploit", lambda t: t.synth(model=_exploit_pt(t, "exploit.pth", raw_pickle=True)),
         r"was refused"),
    Case("ckpt-pickle-renamed-safetensors", lambda t: t.synth(model=_exploit_pt(t, "exploit.safetensors")),
         r"PyTorch pickle/zip file, not a safetensors file"),
    Case("ckpt-image-size-not-fitting-network", lambda t: t.synth(model=_edited_checkpoint(t, image_size=18)),
         r"model grid image_size 18 does not fit its network 'denoiser'"),
    Case("ckpt-context-not-matching-network", lambda t: t.synth(model=_edited_checkpoint(
        t, "unet_cnn", context_slices=1, mr_channels=3)), r"expects 1 input channels .* got 3"),
    Case("ckpt-syndiff-labelled-ddpm", lambda t: t.synth(model=_relabelled_checkpoint(t, "syndiff", "ddpm")),
         r"no 'denoiser' network"),
    Case("ckpt-unknown-method", lambda t: t.synth(model=_relabelled_checkpoint(t, "ddpm", "diffusion2")),
         r"unknown method 'diffusion2'"),
    # --- outputs ------------------------------------------------------------------------------------
    Case("out-ct-bad-suffix", lambda t: t.synth(outputs=False) + ["--out-ct", str(t.out / "sct.png")],
         r"--out-ct .*sct\.png has an unsupported suffix", ("sct.png",)),
    Case("out-ct-folder-missing", lambda t: t.synth(outputs=False) + ["--out-ct", str(t.out / "no" / "sct.nii.gz")],
         r"folder of --out-ct .* does not exist"),
    Case("out-std-same-as-out-ct", lambda t: t.synth(outputs=False) + ["--out-ct", str(t.out / "sct.nii.gz"),
                                                                       "--out-std", str(t.out / "sct.nii.gz")],
         r"--out-ct and --out-std are the same file"),
    Case("out-ct-overwrites-mri", lambda t: t.synth(outputs=False) + ["--out-ct", t.good["mr"]],
         r"--out-ct .* is the input --mri"),
    Case("info-json-folder-missing", lambda t: t.synth("--info-json", t.out / "no" / "run.json"),
         r"folder of --info-json .* does not exist"),
    # --- register ----------------------------------------------------------------------------------
    Case("register-fixed-4d", lambda t: t.register(fixed=t.bad_volume("4d.nrrd", img=sitk.Image([8, 8, 4, 2],
                                                                                              sitk.sitkFloat32))),
         r"fixed CT .* 4D image"),
    Case("register-moving-constant",
         lambda t: t.register(moving=t.bad_volume("c.nii.gz", np.full(SHAPE, 3.0, np.float32))),
         r"moving MRI is constant"),
    Case("register-moving-nan",
         lambda t: t.register(moving=t.bad_volume("n.nii.gz", _with_voxel(t.mr_array(), np.nan))),
         r"moving MRI .* NaN/Inf"),
    Case("register-moving-rgb", lambda t: t.register(moving=t.bad_volume("rgb.mha", img=sitk.Image(
        [16, 16, 4], sitk.sitkVectorUInt8, 3))), r"components per voxel"),
    Case("register-out-bad-suffix", lambda t: t.register()[:-4] + ["--out", str(t.out / "reg.txt")],
         r"--out .*reg\.txt has an unsupported suffix", ("reg.txt",)),
    Case("register-transform-bad-suffix", lambda t: t.register()[:-2] + ["--transform", str(t.out / "t.mat")],
         r"transform file: unsupported suffix '\.mat'", ("t.mat",)),
    Case("register-mode-unknown", lambda t: t.register(None, None, "--mode", "elastic"), r"invalid choice: 'elastic'"),
    # --- evaluate (--pred / --ref mode) -------------------------------------------------------------
    Case("evaluate-other-spacing", lambda t: t.evaluate(pred=t.bad_volume("p.nii.gz", t.ct_array(), spacing=(1, 1, 1))),
         r"different grids"),
    Case("evaluate-other-size", lambda t: t.evaluate(pred=t.bad_volume("p.nii.gz", t.ct_array()[:3])),
         r"different grids"),
    Case("evaluate-ref-nan", lambda t: t.evaluate(ref=t.bad_volume("r.nrrd", _with_voxel(t.ct_array(), np.nan))),
         r"reference CT .* NaN/Inf"),
    Case("evaluate-pred-2d", lambda t: t.evaluate(pred=t.bad_volume("p2.nii.gz", np.zeros((16, 16), np.float32))),
         r"2D image"),
    Case("evaluate-pred-missing", lambda t: t.evaluate(pred=t.tmp / "nopred.nii.gz"), r"does not exist"),
    Case("evaluate-mask-other-grid", lambda t: t.evaluate(None, None, "--mask", t.bad_volume(
        "m.nii.gz", np.ones(SHAPE, np.uint8), origin=(0.0, 0.0, 0.0))), r"different grids"),
    Case("evaluate-ref-not-in-hu", lambda t: t.evaluate(ref=t.bad_volume(
        "raw.nii.gz", (t.ct_array() + 1024).astype(np.uint16))), r"Hounsfield"),
    # --- info ---------------------------------------------------------------------------------------
    Case("info-truncated", lambda t: ["info", "--model", _truncated(t)], r"truncated or corrupted"),
    Case("info-pickle-exploit", lambda t: ["info", "--model", _exploit_pt(t)], r"pickled Python object"),
    Case("info-missing", lambda t: ["info", "--model", str(t.tmp / "x.safetensors")], r"not found"),
    # --- phantom ------------------------------------------------------------------------------------
    Case("phantom-spacing-0", lambda t: _phantom(t, "--spacing", 0, 1, 1), r"spacing .* not three positive numbers",
         ("phantoms/case_000",)),
    Case("phantom-spacing-nan", lambda t: _phantom(t, "--spacing", "nan", 1, 1), r"spacing .* not three positive",
         ("phantoms/case_000",)),
    Case("phantom-cases-0", lambda t: _phantom(t, "--cases", 0), r"--cases must be >= 1", ("phantoms/case_000",)),
    Case("phantom-size-0", lambda t: _phantom(t, "--size", 8, 0, 4), r"--size must be >= 1", ("phantoms/case_000",)),
    Case("phantom-out-is-a-file", lambda t: ["phantom", "--out", _notes(t), "--size", "8", "8", "4"],
         r"is a file; phantom cases are written into a folder", ("notes.txt",)),
]


def _touch(p: Path) -> str:
    p.write_bytes(b"")
    return str(p)


def _notes(t: Env) -> str:
    p = t.out / "notes.txt"
    if not p.exists():
        p.write_text("a user's file where a folder was expected")
    return str(p)


def _nrrd_zero_size(t: Env) -> str:
    p = t.tmp / "zero_size.nrrd"
    p.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 16 16 0\nencoding: raw\nendian: little\n\n")
    return str(p)


def _case_id(c):
    return c.id if isinstance(c, Case) else c.values[0].id


STANDARD_OUTPUTS = ("sct.nii.gz", "std.nii.gz", "reg.nii.gz", "reg.tfm", "metrics.json", "phantoms/case_000/mr.nii.gz")


@pytest.mark.parametrize("existing", [False, True], ids=["no-previous-output", "previous-output-kept"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_refused_clearly_and_writes_nothing(case, existing, good, tmp_path, capsys, one_torch_thread):
    t = Env(good=good, tmp=tmp_path / "in", out=tmp_path / "out")
    t.tmp.mkdir()
    t.out.mkdir()
    argv = [str(a) for a in case.build(t)]
    watched = [t.out / rel for rel in STANDARD_OUTPUTS + tuple(case.outputs)]
    watched += [Path(a) for a in argv if a == good["mr"]]  # an input named as an output must survive too
    if existing:
        for p in watched:
            if p.is_relative_to(t.out) and not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(PREVIOUS)
    before = {p: p.read_bytes() if p.is_file() else None for p in watched if p.exists()}
    capsys.readouterr()

    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse-level errors
        rc = exc.code
    err = capsys.readouterr().err

    assert rc == 2, f"exit status {rc} for {argv}\n{err}"
    assert "Traceback" not in err, err
    assert re.search(r"(^|: )error: ", err, re.M) and "\n  Fix: " in err, err
    assert re.search(case.needle, err, re.I | re.S), f"expected /{case.needle}/ in:\n{err}"
    for p in watched:
        if p in before:
            assert before[p] is None or p.read_bytes() == before[p], f"{p} was changed"
        else:
            assert not p.exists(), f"{p} was written"
    leftovers = [p.name for p in t.out.rglob(".*")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    assert not (t.tmp / MARKER_NAME).exists(), "unpickling ran code from the checkpoint"


def test_checkpoint_for_another_image_size_is_resampled(good, tmp_path, capsys, one_torch_thread):
    """A model trained on another grid (32 pixels here, 16x16 MRI slices) is not an error: slices are resized
    to the model grid and back, and the sCT has exactly the MRI's geometry."""
    model = save_model(create_model("ddpm", 32), tmp_path / "m32.safetensors")
    out = tmp_path / "sct.nrrd"
    assert main(["synthesize", "--mri", good["mr"], "--model", str(model), "--out-ct", str(out),
                 "--sampler", "ddim", "--steps", "1"]) == 0
    sct, mr = sitk.ReadImage(str(out)), sitk.ReadImage(good["mr"])
    assert sct.GetSize() == mr.GetSize() and sct.GetSpacing() == mr.GetSpacing()
    assert sct.GetOrigin() == mr.GetOrigin() and sct.GetDirection() == mr.GetDirection()
    assert np.isfinite(sitk.GetArrayFromImage(sct)).all()
