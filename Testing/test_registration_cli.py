"""``mrtoct register``: quality lines on stdout, ``--json`` with the quality numbers, warnings, bad arguments."""

import json

import numpy as np
import SimpleITK as sitk

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.data.phantom import generate_case
from MRtoCTSynthesisLib.io.volume import Volume, make_geometry, write_volume


def _pair(tmp_path):
    case = generate_case(8, size=(48, 48, 16), spacing=(8.0, 8.0, 9.0))
    g = case.mr_t1.geometry
    # a shift of the grid: the centres of mass already find it; the optimiser must keep it
    moved = Volume(case.mr_t1.array, make_geometry(g.size, g.spacing, tuple(np.add(g.origin, (9.0, -6.0, 5.0))),
                                                   g.direction))
    write_volume(case.ct, tmp_path / "ct.nii.gz")
    write_volume(moved, tmp_path / "mr.nii.gz")
    return tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz"


def test_register_prints_quality_and_writes_json(tmp_path, capsys):
    ct, mr = _pair(tmp_path)
    out, js, tfm = tmp_path / "reg.nii.gz", tmp_path / "q.json", tmp_path / "t.tfm"
    assert main(["register", "--fixed", str(ct), "--moving", str(mr), "--out", str(out), "--json", str(js),
                 "--transform", str(tfm)]) == 0
    text = capsys.readouterr().out
    assert "(rigid)" in text  # the default mode
    assert "metric (Mattes MI, lower is better): as given" in text and "gradient correlation" in text
    assert "warning:" not in text
    doc = json.loads(js.read_text())
    q = doc["quality"]
    assert doc["mode"] == "rigid" and doc["converged"] is True and doc["warnings"] == []
    assert q["metric_final"] <= q["metric_start"] + 2e-3 and q["metric_final"] < q["metric_as_given"]
    assert q["gradient_correlation_after"] > q["gradient_correlation_before"]
    assert doc["transform"]["type"] == "rigid"
    # the recovered translation: the MRI's grid was shifted by (9, -6, 5) mm, so fixed -> moving adds it
    t = sitk.ReadTransform(str(tfm))
    centre = np.array(sitk.ReadImage(str(ct)).TransformContinuousIndexToPhysicalPoint((23.5, 23.5, 7.5)))
    np.testing.assert_allclose(np.array(t.TransformPoint(tuple(centre))) - centre, (9.0, -6.0, 5.0), atol=1.0)
    levels = doc["stages"][0]["levels"]
    assert all({"metric_first", "metric_last", "moved_mm", "stop", "shrink_fixed"} <= set(lv) for lv in levels)


def test_register_reports_an_unconverged_run_as_a_warning(tmp_path, capsys):
    ct, mr = _pair(tmp_path)
    js = tmp_path / "q.json"
    assert main(["register", "--fixed", str(ct), "--moving", str(mr), "--out", str(tmp_path / "r.nii.gz"),
                 "--iterations", "0", "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "warning: rigid level 1" in text and "no iterations" in text
    doc = json.loads(js.read_text())
    assert doc["converged"] is False and doc["warnings"]


def test_register_json_folder_is_checked_before_the_work(tmp_path, capsys):
    ct, mr = _pair(tmp_path)
    code = main(["register", "--fixed", str(ct), "--moving", str(mr), "--out", str(tmp_path / "r.nii.gz"),
                 "--json", str(tmp_path / "missing" / "q.json")])
    err = capsys.readouterr().err
    assert code == 2 and "--json" in err and "Fix:" in err
    assert not (tmp_path / "r.nii.gz").exists()


def test_panel_summary_carries_the_engine_numbers_and_warnings(tmp_path, capsys):
    """The Slicer panel's registration lines (slicer.bridge.registration_summary) come from the same JSON the
    engine wrote, through the argv the panel builds: the numbers as written, each warning on its own line."""
    from MRtoCTSynthesisLib.slicer import bridge

    ct, mr = _pair(tmp_path)
    js = tmp_path / "q.json"
    argv = bridge.build_register_command("python", ct, mr, tmp_path / "r.nii.gz", json_out=js)
    assert main(argv[3:]) == 0  # drop "python -m MRtoCTSynthesisLib..."
    q = json.loads(js.read_text())["quality"]
    lines = bridge.registration_summary(js)
    assert lines[0].startswith("Registration (rigid)")  # the panel's default mode is rigid
    assert f"{q['metric_start']:.3f} -> {q['metric_final']:.3f}" in lines[0]
    assert f"{q['gradient_correlation_after']:.3f}" in lines[0] and "%" in lines[0]
    assert not any(line.startswith("Registration warning") for line in lines)
    # an unconverged run: its warnings are lines of their own
    assert main(bridge.build_register_command("python", ct, mr, tmp_path / "r2.nii.gz", json_out=js)[3:]
                + ["--iterations", "0"]) == 0
    warned = [line for line in bridge.registration_summary(js) if line.startswith("Registration warning")]
    assert warned and len(warned) == len(json.loads(js.read_text())["warnings"])
    assert "not available" in bridge.registration_summary(tmp_path / "missing.json")[0]
