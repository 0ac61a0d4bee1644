"""`mrtoct synthesize --from-record info.json` rebuilds a run from its record: same sCT bytes on CPU."""

import json

import pytest
import SimpleITK as sitk

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.assets import DEMO_MODEL

pytestmark = pytest.mark.skipif(not DEMO_MODEL.exists(), reason="bundled demo model not present in this checkout")


def test_from_record_reproduces_the_run_bit_for_bit(demo_four_slices, tmp_path, capsys, one_torch_thread):
    mr = demo_four_slices / "mr.nii.gz"
    first = ["synthesize", "--mri", str(mr), "--model", str(DEMO_MODEL), "--out-ct", str(tmp_path / "a.nii.gz"),
             "--out-std", str(tmp_path / "a_std.nii.gz"), "--sampler", "pc", "--steps", "2", "--samples", "2",
             "--seed", "11", "--batch-size", "3", "--info-json", str(tmp_path / "a.json")]
    assert main(first) == 0
    record = json.loads((tmp_path / "a.json").read_text())
    # the record holds every sampler option (not only name and steps) and the inputs with their digests
    assert record["sampler_config"]["snr"] == 0.16 and record["sampler_config"]["corrector_steps"] == 1
    assert record["sampler_config"]["predictor"] == "em" and record["sampler_config"]["t_spacing"] == "uniform"
    assert record["seed"] == 11 and record["batch_size"] == 3 and record["threads"] == 1
    assert len(record["inputs"]["mri"]["sha256"]) == 64 and record["inputs"]["model"]["path"].endswith(DEMO_MODEL.name)
    capsys.readouterr()

    # no --mri/--model: taken from the record; the sCT and std are the same bytes
    assert main(["synthesize", "--from-record", str(tmp_path / "a.json"), "--out-ct", str(tmp_path / "b.nii.gz"),
                 "--out-std", str(tmp_path / "b_std.nii.gz"), "--info-json", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.nii.gz").read_bytes() == (tmp_path / "a.nii.gz").read_bytes()
    assert (tmp_path / "b_std.nii.gz").read_bytes() == (tmp_path / "a_std.nii.gz").read_bytes()
    again = json.loads((tmp_path / "b.json").read_text())
    assert again["sampler_config"] == record["sampler_config"] and again["options"]["sampler_options"]
    assert "warning" not in capsys.readouterr().err

    # a different seed gives a different sample (the comparison above can fail)
    assert main(["synthesize", "--mri", str(mr), "--model", str(DEMO_MODEL), "--out-ct", str(tmp_path / "c.nii.gz"),
                 "--sampler", "pc", "--steps", "2", "--samples", "2", "--seed", "12", "--batch-size", "3"]) == 0
    assert (tmp_path / "c.nii.gz").read_bytes() != (tmp_path / "a.nii.gz").read_bytes()


def test_from_record_refuses_sampling_flags_and_bad_records(demo_four_slices, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "ddpm", "sampler": "ddim"}))
    out = str(tmp_path / "x.nii.gz")
    assert main(["synthesize", "--from-record", str(bad), "--out-ct", out]) == 2
    assert "not a run record" in capsys.readouterr().err
    record = tmp_path / "r.json"
    assert main(["synthesize", "--mri", str(demo_four_slices / "mr.nii.gz"), "--model", str(DEMO_MODEL),
                 "--out-ct", str(tmp_path / "r.nii.gz"), "--steps", "1", "--info-json", str(record)]) == 0
    capsys.readouterr()
    assert main(["synthesize", "--from-record", str(record), "--out-ct", out, "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert "--seed cannot be combined with --from-record" in err and "Fix:" in err
    # another MRI with the recorded settings: allowed, with a warning that it is not the recorded file
    other = tmp_path / "other.nii.gz"
    img = sitk.ReadImage(str(demo_four_slices / "mr.nii.gz"))
    sitk.WriteImage(sitk.Cast(img, sitk.sitkFloat32) * 1.5, str(other))
    assert main(["synthesize", "--from-record", str(record), "--mri", str(other), "--out-ct", out]) == 0
    assert "is not the recorded file" in capsys.readouterr().err
