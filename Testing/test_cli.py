"""The `mrtoct` command line as a user runs it: exit codes, messages, outputs, nothing half-written."""

import json

import pytest
import SimpleITK as sitk

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.io.volume import read_volume


@pytest.fixture(scope="module")
def cases(tiny_phantom_cases):
    """Two phantom cases written by `mrtoct phantom` (conftest, once per session)."""
    return tiny_phantom_cases


@pytest.fixture(scope="module")
def tiny_model(cases, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    assert main(["train", "--data", str(cases), "--out", str(path), "--image-size", "32", "--steps", "3",
                 "--batch-size", "2"]) == 0
    return path


def test_phantom_writes_synthrad_layout(cases):
    for name in ("case_000", "case_001"):
        for f in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz"):
            assert (cases / name / f).exists()
    ct = read_volume(cases / "case_000" / "ct.nii.gz")
    assert ct.array.min() < -900 and ct.array.max() > 700  # air and bone, in HU


def test_evaluate_reports_and_writes_json(cases, tmp_path, capsys):
    ref = cases / "case_000" / "ct.nii.gz"
    shifted = tmp_path / "pred.nii.gz"
    img = sitk.ReadImage(str(ref))
    out = sitk.Cast(img, sitk.sitkFloat32) + 30.0
    sitk.WriteImage(out, str(shifted))
    js = tmp_path / "m.json"
    assert main(["evaluate", "--pred", str(shifted), "--ref", str(ref), "--mask",
                 str(cases / "case_000" / "mask.nii.gz"), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["me_hu"] == pytest.approx(30.0, abs=1e-3) and res["mae_hu"] == pytest.approx(30.0, abs=1e-3)
    assert "| case" in capsys.readouterr().out


def test_synthesize_and_info(cases, tiny_model, tmp_path, capsys):
    out_ct, out_std = tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz"
    mr = cases / "case_001" / "mr.nii.gz"
    assert main(["synthesize", "--mri", str(mr), "--model", str(tiny_model), "--out-ct", str(out_ct),
                 "--out-std", str(out_std), "--sampler", "ddim", "--steps", "2", "--samples", "2"]) == 0
    sct, src = read_volume(out_ct), read_volume(mr)
    assert sct.geometry.matches(src.geometry) and read_volume(out_std).geometry.matches(src.geometry)
    assert main(["info", "--model", str(tiny_model)]) == 0
    assert "method: ddpm" in capsys.readouterr().out


def test_bad_inputs_exit_2_and_keep_existing_output(cases, tiny_model, tmp_path, capsys):
    good = tmp_path / "sct.nii.gz"
    good.write_bytes(b"previous good result")
    mr = str(cases / "case_000" / "mr.nii.gz")
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(flat))  # a 2D image
    const = tmp_path / "const.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkFloat32) + 5.0, str(const))
    bad_ckpt = tmp_path / "bad.safetensors"
    bad_ckpt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    base = ["synthesize", "--model", str(tiny_model), "--out-ct", str(good), "--steps", "2"]
    runs = [
        (base + ["--mri", str(tmp_path / "missing.nii.gz")], "does not exist"),
        (base + ["--mri", str(flat)], "2D image"),
        (base + ["--mri", str(const)], "constant"),
        (["synthesize", "--mri", mr, "--model", str(bad_ckpt), "--out-ct", str(good)], "corrupt"),
        (["synthesize", "--mri", mr, "--model", str(tiny_model), "--out-ct", str(tmp_path / "nodir" / "x.nii.gz")],
         "does not exist"),
    ]
    for argv, needle in runs:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Fix:" in err, err
        assert good.read_bytes() == b"previous good result"
    # argparse-level validation (steps 0, samples 0) exits with status 2 too
    for extra in (["--steps", "0"], ["--samples", "0"]):
        with pytest.raises(SystemExit) as ex:
            main(["synthesize", "--mri", mr, "--model", str(tiny_model), "--out-ct", str(good)] + extra)
        assert ex.value.code == 2
    assert good.read_bytes() == b"previous good result"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_evaluate_mismatched_grids(cases, tmp_path, capsys):
    other = tmp_path / "other.nii.gz"
    img = sitk.ReadImage(str(cases / "case_000" / "ct.nii.gz"))
    img.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(img, str(other))
    assert main(["evaluate", "--pred", str(other), "--ref", str(cases / "case_000" / "ct.nii.gz")]) == 2
    assert "different grids" in capsys.readouterr().err


def test_channels_last_flag_gives_the_same_sct(cases, tiny_model, tmp_path, capsys):
    """--channels-last changes the memory layout only: the sCT must match the default layout's to float noise."""
    import numpy as np

    from MRtoCTSynthesisLib.apps.cli import build_parser
    from MRtoCTSynthesisLib.apps.commands.synthesize import COMPILE_CHOICES, options_from_args
    from MRtoCTSynthesisLib.pipeline.synthesis import COMPILE_MODES

    assert tuple(COMPILE_CHOICES) == COMPILE_MODES
    mr = cases / "case_001" / "mr.nii.gz"
    base = ["synthesize", "--mri", str(mr), "--model", str(tiny_model), "--sampler", "ddim", "--steps", "2"]
    assert main([*base, "--out-ct", str(tmp_path / "a.nii.gz")]) == 0
    assert main([*base, "--out-ct", str(tmp_path / "b.nii.gz"), "--channels-last"]) == 0
    a, b = read_volume(tmp_path / "a.nii.gz").array, read_volume(tmp_path / "b.nii.gz").array
    assert np.abs(a - b).max() < 0.5  # HU; same network, same noise, only the convolution layout differs
    opts = options_from_args(build_parser().parse_args([*base, "--out-ct", "x.nii.gz", "--compile"]))
    assert opts.compile and opts.compile_mode == "default" and not opts.channels_last
    opts = options_from_args(build_parser().parse_args(
        [*base, "--out-ct", "x.nii.gz", "--compile", "reduce-overhead", "--channels-last"]))
    assert opts.compile and opts.compile_mode == "reduce-overhead" and opts.channels_last
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--out-ct", str(tmp_path / "c.nii.gz"), "--compile", "fastest"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
