"""The out-of-distribution check of every run and the recalibrated MC std (issue 22 items 5 and 6).

Numbers are checked against independent references: SciPy's Jensen-Shannon distance and Student-t quantiles, the
closed-form edge shift of a Gaussian-smoothed step for the body size, numpy quantiles for the conformal scale.
"""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import jensenshannon

from MRtoCTSynthesisLib.io.volume import Volume, make_geometry
from MRtoCTSynthesisLib.models.methods import create_model
from MRtoCTSynthesisLib.pipeline.input_check import (
    BODY_LEVEL,
    SMOOTH_MM,
    check_input,
    describe,
    input_features,
    js_distance,
    summarize_features,
)
from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize
from MRtoCTSynthesisLib.pipeline.uncertainty import CALIBRATION_FORMAT, calibration_scale, t_quantile_ratio
from MRtoCTSynthesisLib.slicer import bridge
from MRtoCTSynthesisLib.training.records import central_slab, weighted_quantile


def box_volume(width_mm=120.0, depth_mm=80.0, spacing=(2.0, 2.0, 5.0), n=(96, 96, 6), inner=0.2, seed=0):
    """A normalised canonical volume: background -1, a body box of the given size whose values are drawn around
    ``inner`` (model units), axial slices; array (z, y, x)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = n
    arr = np.full((nz, ny, nx), -1.0, np.float32)
    w, d = int(round(width_mm / spacing[0])), int(round(depth_mm / spacing[1]))
    y0, x0 = (ny - d) // 2, (nx - w) // 2
    arr[:, y0:y0 + d, x0:x0 + w] = np.clip(inner + 0.15 * rng.standard_normal((nz, d, w)), -1, 1)
    return arr


def test_js_distance_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(5):
        p, q = rng.random(24), rng.random(24)
        p[:3] = 0  # empty bins are allowed
        assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-9)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


def test_body_size_follows_the_smoothed_edge():
    """The body is the smoothed slice above BODY_LEVEL: a step from -1 to v blurred by a Gaussian of SMOOTH_MM crosses
    the level at x = sigma * Phi^-1((level + 1) / (v + 1)) outside the edge; the measured extent is the box plus
    twice that shift (to one pixel)."""
    spacing = (2.0, 2.0, 5.0)
    arr = box_volume(120.0, 80.0, spacing, inner=0.2)
    f = input_features(arr, (spacing[2], spacing[1], spacing[0]), 3.0)
    shift = -SMOOTH_MM * stats.norm.ppf((BODY_LEVEL + 1) / (0.2 + 1))
    assert f["body_width_mm"] == pytest.approx(120.0 + 2 * shift, abs=spacing[0] + 0.5)
    assert f["body_depth_mm"] == pytest.approx(80.0 + 2 * shift, abs=spacing[1] + 0.5)
    assert (f["slice_mm"], f["model_pixel_mm"]) == (5.0, 3.0)
    assert sum(f["histogram"]) == pytest.approx(1.0)


def _record(n=6):
    feats = [input_features(box_volume(120 + 4 * i, 80 + 2 * i, seed=i), (5.0, 2.0, 2.0), 3.0) for i in range(n)]
    return summarize_features(feats, [40.0, 50.0, 45.0], std_run={"sampler": "dpmpp", "steps": 20, "samples": 4})


def test_check_accepts_like_cases_and_flags_shifted_ones():
    record = _record()
    like = check_input(input_features(box_volume(126, 83, seed=99), (5.0, 2.0, 2.0), 3.0), record, 48.0)
    assert like["in_distribution"] is True and like["score"] <= 1 and like["reasons"] == []
    # another contrast: the body is dark instead of mid-grey
    dark = check_input(input_features(box_volume(126, 83, inner=-0.6, seed=5), (5.0, 2.0, 2.0), 3.0), record)
    assert dark["in_distribution"] is False and any("histogram" in r for r in dark["reasons"])
    # a body 1.7x as wide: outside the range times the tolerance (1.3)
    big = check_input(input_features(box_volume(240, 83, n=(160, 96, 6), seed=6), (5.0, 2.0, 2.0), 3.0), record)
    assert big["in_distribution"] is False and any("body width" in r for r in big["reasons"])
    lo, hi = record["ranges"]["body_width_mm"]
    assert big["scores"]["body_width_mm"] == pytest.approx(big["features"]["body_width_mm"] / (hi * 1.3), abs=1e-4)
    # samples far more spread out than in training: the model-based score
    unsure = check_input(input_features(box_volume(126, 83, seed=7), (5.0, 2.0, 2.0), 3.0), record, 200.0)
    assert unsure["in_distribution"] is False
    assert unsure["scores"]["mc_std_hu"] == pytest.approx(200 / (50 * 1.5), abs=1e-4)
    assert "OUT OF DISTRIBUTION" in describe(unsure)
    none = check_input(like["features"] | {"histogram": record["histogram"]["mean"]}, None)
    assert none["in_distribution"] is None and "no training record" in none["reasons"][0]


def test_every_synthesis_writes_the_input_check_and_applies_a_stored_calibration():
    torch.manual_seed(0)
    model = create_model("ddpm", 32, unet="tiny")
    arr = (box_volume(120, 80, (4.0, 4.0, 5.0), (48, 48, 3), inner=0.2) + 1) * 500  # an "MRI" in arbitrary units
    mri = Volume(arr, make_geometry((48, 48, 3), (4.0, 4.0, 5.0)))
    opts = SynthesisOptions(samples=3, steps=2, seed=0, device="cpu")
    plain = synthesize(mri, model, opts)
    assert plain.info["input_check"]["in_distribution"] is None  # no record in this checkpoint
    model.metadata["input_record"] = _record()
    model.metadata["uncertainty_calibration"] = {"format": CALIBRATION_FORMAT, "scale": 1.7,
                                                 "run": {"sampler": "dpmpp", "steps": 2, "samples": 3}}
    res = synthesize(mri, model, opts)
    check = res.info["input_check"]
    assert set(check) >= {"in_distribution", "score", "reasons"} and isinstance(check["in_distribution"], bool)
    json.dumps(check)  # goes into --info-json as it is
    np.testing.assert_allclose(res.std.array, 1.7 * plain.std.array, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(res.sct.array, plain.sct.array)
    assert res.info["uncertainty"]["calibration_factor"] == pytest.approx(1.7)
    other = synthesize(mri, model, SynthesisOptions(samples=3, steps=3, seed=0, device="cpu"))
    assert other.info["uncertainty"]["calibration_factor"] == 1.0  # fitted with 2 steps: not applied to 3


def test_calibration_scale_rules():
    cal = {"format": CALIBRATION_FORMAT, "scale": 1.25, "run": {"sampler": "dpmpp", "steps": 20, "samples": 8}}
    assert calibration_scale(cal, "ddpm", "dpmpp", 20, 8)[0] == pytest.approx(1.25)
    want = 1.25 * stats.t.ppf(0.975, 3) / stats.t.ppf(0.975, 7)  # K = 4 instead of 8
    assert calibration_scale(cal, "ddpm", "dpmpp", 20, 4)[0] == pytest.approx(want)
    assert t_quantile_ratio(8, 8) == 1.0
    assert calibration_scale(cal, "syndiff", "syndiff", 4, 8)[0] == 1.0
    assert calibration_scale(cal, "ddmm_synth", "dpmpp", 20, 8)[0] == 1.0  # fitted without CT measurements
    assert calibration_scale(cal, "ddpm", "dpmpp", 20, 1)[0] == 1.0
    assert calibration_scale(None, "ddpm", "dpmpp", 20, 8)[0] == 1.0


def testweighted_quantile_weights_cases_equally():
    a, b = np.arange(100.0), np.arange(1000.0, 1010.0)  # 100 and 10 voxels: each case half the weight
    assert weighted_quantile([a, b], 0.25) == pytest.approx(np.quantile(a, 0.5), abs=1.0)
    assert weighted_quantile([a], 0.9) == pytest.approx(np.quantile(a, 0.9), abs=1.0)


def test_central_slab_keeps_positions():
    arr = np.arange(4 * 5 * 10, dtype=np.float32).reshape(10, 5, 4)
    vol = Volume(arr, make_geometry((4, 5, 10), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0)))
    slab = central_slab(vol, 4)
    np.testing.assert_array_equal(slab.array, arr[3:7])
    assert slab.geometry.origin == pytest.approx((5.0, 6.0, 7.0 + 3 * 3.0))


def test_bridge_shows_the_check():
    ood = {"in_distribution": False, "score": 2.5, "reasons": ["body width 400 mm is outside"]}
    assert "OUT OF" in bridge.input_check_text(ood) and "body width" in bridge.input_check_text(ood)
    rows = dict(bridge.metrics_table_rows({"mae_hu": 50.0}, ood))
    assert rows["Input check"] == "OUT OF DISTRIBUTION" and rows["Input check score (<= 1: in)"] == "2.50"
    assert bridge.read_input_check(json.dumps({"input_check": ood})) == ood
    assert bridge.read_input_check("/nonexistent/run.json") is None
    assert bridge.input_check_text(None) == "" and bridge.metrics_table_rows({"mae_hu": 1.0}) == [("MAE (HU)", "1.0")]
    assert not math.isnan(float(rows["Input check score (<= 1: in)"]))


def test_export_stores_record_and_calibration(tiny_phantom_cases, tmp_path):
    """`mrtoct export --record-data --calibration-data` writes both into the checkpoint (checksum over the metadata);
    the calibration's scale is its 95 % quantile of |err| / std over 1.96; a missing folder is refused."""
    from MRtoCTSynthesisLib.apps.cli import main
    from MRtoCTSynthesisLib.models.checkpoint import load_checkpoint

    src = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(tiny_phantom_cases), "--out", str(src), "--image-size", "32", "--steps", "2",
                 "--batch-size", "2"]) == 0
    out = tmp_path / "small.safetensors"
    assert main(["export", "--model", str(src), "--out", str(out), "--record-data", str(tiny_phantom_cases),
                 "--calibration-data", str(tiny_phantom_cases), "--record-samples", "2",
                 "--calibration-samples", "3"]) == 0
    meta = load_checkpoint(out).metadata  # verifies the checksum, which covers the metadata
    rec, cal = meta["input_record"], meta["uncertainty_calibration"]
    assert rec["cases"] == 2 and rec["mc_std_hu"]["run"]["samples"] == 2 and len(rec["histogram"]["mean"]) == 24
    assert cal["scale"] == pytest.approx(cal["quantiles"]["0.95"] / 1.959964)
    # an untrained model: its samples saturate, so the std is far too small and the scale large; coverage can only grow
    before, after = (np.mean(list(cal[k]["95"].values())) for k in ("coverage_before", "coverage_after"))
    assert cal["scale"] > 1 and after >= before
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "x.safetensors"),
                 "--record-data", str(tmp_path / "nothing")]) != 0
