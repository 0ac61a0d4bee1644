"""Tests for MRtoCTSynthesisLib.pipeline.metrics against independent references.

References: scikit-image (mean_squared_error, peak_signal_noise_ratio, structural_similarity,
downscale_local_mean), numpy on hand-built cases, and closed forms. scikit-image is a test-only dependency.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from skimage.transform import downscale_local_mean

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.io.volume import Volume, make_geometry
from MRtoCTSynthesisLib.pipeline import metrics as M

R = 4095.0
LO, HI = -1024.0, 3071.0
PAD = 5  # (11 - 1) // 2 for sigma 1.5, truncate 3.5


# ---------------------------------------------------------------------------------------------- helpers

def prep(a, shift=True):
    """Independent version of the documented preprocessing: clip to [-1024, 3071], optionally shift by +1024."""
    out = np.clip(np.asarray(a, dtype=np.float64), LO, HI)
    return out + 1024.0 if shift else out


def sk_ssim(a, b, full=False, **kw):
    return structural_similarity(a, b, data_range=R, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, full=full, **kw)


def sk_masked_mean(a, b, mask, shift=True):
    """skimage's full SSIM map, cropped by PAD on every axis, averaged over the mask voxels in that interior."""
    _, smap = sk_ssim(prep(a, shift), prep(b, shift), full=True)
    inner = tuple(slice(PAD, n - PAD) for n in smap.shape)
    if not mask[inner].any():  # documented fallback: mask only in the border strip -> all mask voxels
        return float(smap[mask].mean())
    return float(smap[inner][mask[inner]].mean())


def sk_cs_mean(a, b):
    """Mean contrast-structure term via skimage: with a huge K1 the luminance factor is 1 to ~1e-12."""
    return sk_ssim(a, b, K1=1e6)


def phantom(shape, seed=0):
    """Smooth CT-like phantom in HU: air background, soft-tissue ellipsoid, a bone blob, gentle texture."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g * g for g in grids)
    img = np.full(shape, -1000.0)
    img[r2 < 0.7] = 40.0
    bone = sum((g - 0.25) ** 2 for g in grids) < 0.05
    img[bone] = 1200.0
    img += 30.0 * np.sin(5 * grids[-1]) * np.cos(4 * grids[-2])
    return img + rng.normal(0, 5, shape)


@pytest.fixture(scope="module")
def pair2d():
    ref = phantom((64, 72), seed=1)
    pred = ref + np.random.default_rng(2).normal(0, 60, ref.shape)
    return pred, ref


@pytest.fixture(scope="module")
def pair3d():
    ref = phantom((14, 40, 36), seed=3)
    pred = ref + np.random.default_rng(4).normal(0, 80, ref.shape) + 15.0
    return pred, ref


# ---------------------------------------------------------------------------------------------- constants

def test_constants():
    assert M.HU_MIN == -1024.0 and M.HU_MAX == 3071.0 and M.DATA_RANGE == 4095.0
    assert M.MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    assert M.ssim_window_size(1.5) == 11


# ---------------------------------------------------------------------------------------------- MAE / ME

def test_constant_offset_gives_me_and_mae_of_offset():
    ref = phantom((6, 20, 20))
    pred = ref + 50.0
    assert M.me(pred, ref) == pytest.approx(50.0, abs=1e-9)
    assert M.mae(pred, ref) == pytest.approx(50.0, abs=1e-9)
    assert M.me(ref, pred) == pytest.approx(-50.0, abs=1e-9)


def test_mixed_errors_closed_form():
    ref = np.zeros((4, 10, 10))
    pred = ref.copy()
    pred[:2] += 50.0   # half the voxels +50
    pred[2:] -= 30.0   # half -30
    assert M.me(pred, ref) == pytest.approx(10.0)    # (50 - 30) / 2
    assert M.mae(pred, ref) == pytest.approx(40.0)   # (50 + 30) / 2
    mask = np.zeros(ref.shape, bool)
    mask[2:, :3] = True                               # only the -30 part
    assert M.me(pred, ref, mask) == pytest.approx(-30.0)
    assert M.mae(pred, ref, mask) == pytest.approx(30.0)


def test_mae_me_masked_against_numpy(pair3d):
    pred, ref = pair3d
    mask = ref > -500
    d = pred[mask] - ref[mask]
    assert M.mae(pred, ref, mask) == pytest.approx(np.abs(d).mean(), rel=1e-12)
    assert M.me(pred, ref, mask) == pytest.approx(d.mean(), rel=1e-12)
    # a numeric (0/1 float) mask means the same as the boolean one
    assert M.mae(pred, ref, mask.astype(np.float32)) == pytest.approx(np.abs(d).mean(), rel=1e-12)


def test_mae_is_not_clipped():
    ref = np.full((3, 4, 4), 3000.0)
    pred = np.full((3, 4, 4), 5000.0)
    assert M.mae(pred, ref) == pytest.approx(2000.0)


# ---------------------------------------------------------------------------------------------- PSNR

def test_psnr_unmasked_matches_skimage(pair3d):
    pred, ref = pair3d
    want = peak_signal_noise_ratio(prep(ref, False), prep(pred, False), data_range=R)
    assert M.psnr(pred, ref) == pytest.approx(want, abs=1e-9)
    mse = mean_squared_error(prep(ref, False), prep(pred, False))
    assert M.psnr(pred, ref) == pytest.approx(10 * math.log10(R * R / mse), abs=1e-9)


def test_psnr_masked_matches_skimage_on_extracted_voxels(pair3d):
    pred, ref = pair3d
    mask = ref > -500
    want = peak_signal_noise_ratio(prep(ref, False)[mask], prep(pred, False)[mask], data_range=R)
    assert M.psnr(pred, ref, mask) == pytest.approx(want, abs=1e-9)
    want2 = peak_signal_noise_ratio(prep(ref, False)[mask], prep(pred, False)[mask], data_range=2000.0)
    assert M.psnr(pred, ref, mask, data_range=2000.0) == pytest.approx(want2, abs=1e-9)


def test_psnr_identical_is_inf():
    ref = phantom((5, 16, 16))
    assert M.psnr(ref, ref.copy()) == math.inf


def test_psnr_clips_above_hu_max_and_below_hu_min():
    ref = np.full((2, 8, 8), 3071.0)
    pred = np.full((2, 8, 8), 5000.0)          # both clip to 3071 -> identical
    assert M.psnr(pred, ref) == math.inf
    ref2 = np.full((2, 8, 8), 3000.0)          # clipped difference is 71 HU, not 2000
    assert M.psnr(pred, ref2) == pytest.approx(10 * math.log10(R ** 2 / 71.0 ** 2), abs=1e-9)
    low = np.full((2, 8, 8), -3000.0)          # clips to -1024
    assert M.psnr(low, np.full((2, 8, 8), -1024.0)) == math.inf


# ---------------------------------------------------------------------------------------------- SSIM

@pytest.mark.parametrize("shift", [True, False])
def test_ssim_2d_unmasked_matches_skimage(pair2d, shift):
    pred, ref = pair2d
    want = sk_ssim(prep(pred, shift), prep(ref, shift))
    assert M.ssim(pred, ref, shift=shift) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("shift", [True, False])
def test_ssim_3d_unmasked_matches_skimage(pair3d, shift):
    pred, ref = pair3d
    want = sk_ssim(prep(pred, shift), prep(ref, shift))
    assert M.ssim(pred, ref, shift=shift) == pytest.approx(want, abs=1e-6)


def test_ssim_float32_and_int16_inputs(pair3d):
    pred, ref = pair3d
    p16, r16 = np.round(pred).astype(np.int16), np.round(ref).astype(np.int16)
    want = sk_ssim(prep(p16), prep(r16))
    assert M.ssim(p16, r16) == pytest.approx(want, abs=1e-6)
    want32 = sk_ssim(prep(pred.astype(np.float32)), prep(ref.astype(np.float32)))
    assert M.ssim(pred.astype(np.float32), ref.astype(np.float32)) == pytest.approx(want32, abs=1e-6)


def test_ssim_clips_before_comparing():
    ref = phantom((30, 30), seed=5)
    ref[10:20, 10:20] = 3071.0
    pred = ref.copy()
    pred[10:20, 10:20] = 6000.0  # identical after clipping
    assert M.ssim(pred, ref) == pytest.approx(1.0, abs=1e-12)


def test_ssim_masked_2d_and_3d_match_skimage_map(pair2d, pair3d):
    for pred, ref in (pair2d, pair3d):
        mask = ref > -500
        assert M.ssim(pred, ref, mask) == pytest.approx(sk_masked_mean(pred, ref, mask), abs=1e-6)
        assert M.ssim(pred, ref, mask, shift=False) == pytest.approx(
            sk_masked_mean(pred, ref, mask, shift=False), abs=1e-6)


def test_ssim_fill_outside_matches_synthrad_style(pair2d):
    pred, ref = pair2d
    mask = ref > -500
    pf = np.where(mask, pred, LO)
    rf = np.where(mask, ref, LO)
    want = sk_masked_mean(pf, rf, mask)
    assert M.ssim(pred, ref, mask, fill_outside=True) == pytest.approx(want, abs=1e-6)


def test_ssim_mask_only_in_border_strip_falls_back_to_all_mask_voxels(pair2d):
    pred, ref = pair2d
    mask = np.zeros(ref.shape, bool)
    mask[:3, :] = True  # entirely within the 5-pixel border
    _, smap = sk_ssim(prep(pred), prep(ref), full=True)
    assert M.ssim(pred, ref, mask) == pytest.approx(float(smap[mask].mean()), abs=1e-6)


def test_ssim_identical_is_one(pair3d):
    _, ref = pair3d
    assert M.ssim(ref, ref.copy()) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(ref[7], ref[7].copy(), ref[7] > 0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_blockwise_3d_equals_whole_volume(monkeypatch):
    """Force tiny blocks so the z-halo logic is exercised; the value must still equal skimage's."""
    ref = phantom((30, 16, 16), seed=7)
    pred = ref + np.random.default_rng(8).normal(0, 100, ref.shape)
    want = sk_ssim(prep(pred), prep(ref))
    mask = ref > -500
    want_m = sk_masked_mean(pred, ref, mask)
    monkeypatch.setattr(M, "_BLOCK_VOXELS", 16 * 16 * 3)
    assert M.ssim(pred, ref) == pytest.approx(want, abs=1e-6)
    assert M.ssim(pred, ref, mask) == pytest.approx(want_m, abs=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.one_of(
        st.tuples(st.integers(11, 24), st.integers(11, 24)),
        st.tuples(st.integers(11, 13), st.integers(11, 16), st.integers(11, 16)),
    ),
    seed=st.integers(0, 2 ** 31 - 1),
    spread=st.sampled_from([1.0, 300.0, 3000.0]),
    center=st.floats(-1500.0, 3500.0),
    noise=st.floats(0.0, 2000.0),
)
def test_ssim_property_matches_skimage(shape, seed, spread, center, noise):
    rng = np.random.default_rng(seed)
    ref = center + spread * rng.standard_normal(shape)
    pred = ref + noise * rng.standard_normal(shape)
    want = sk_ssim(prep(pred), prep(ref))
    assert M.ssim(pred, ref) == pytest.approx(want, abs=1e-6)
    mask = rng.random(shape) < 0.5
    mask.flat[0] = True  # never empty
    assert M.ssim(pred, ref, mask) == pytest.approx(sk_masked_mean(pred, ref, mask), abs=1e-6)


# ---------------------------------------------------------------------------------------------- MS-SSIM

def test_ms_ssim_scales_closed_form():
    assert M.ms_ssim_scales((176, 176)) == 5
    assert M.ms_ssim_scales((175, 300)) == 4
    assert M.ms_ssim_scales((128, 128)) == 4
    assert M.ms_ssim_scales((22, 40)) == 2
    assert M.ms_ssim_scales((21, 40)) == 1
    assert M.ms_ssim_scales((11, 11)) == 1
    assert M.ms_ssim_scales((10, 64)) == 0
    assert M.ms_ssim_scales((512, 512), max_scales=3) == 3


def test_ms_ssim_identical_is_one():
    ref = phantom((3, 48, 48), seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricWarning)
        assert M.ms_ssim(ref, ref.copy()) == pytest.approx(1.0, abs=1e-12)
        assert M.ms_ssim(ref[1], ref[1].copy(), ref[1] > 0) == pytest.approx(1.0, abs=1e-12)


def test_ms_ssim_with_one_scale_equals_ssim(pair2d):
    pred, ref = pair2d
    want = sk_ssim(prep(pred), prep(ref))
    # one weight -> exactly one scale
    assert M.ms_ssim(pred, ref, weights=(1.0,)) == pytest.approx(want, abs=1e-6)
    # a slice where only one scale fits (21 // 2 < 11): renormalised weight 1
    small_p, small_r = pred[:21, :30], ref[:21, :30]
    with pytest.warns(M.MetricWarning, match="1 of 5 scales"):
        got = M.ms_ssim(small_p, small_r)
    assert got == pytest.approx(sk_ssim(prep(small_p), prep(small_r)), abs=1e-6)


def test_ms_ssim_five_scales_matches_skimage_built_reference():
    """Wang 2003 from skimage parts: cs means at scales 1-4 (K1 -> huge), SSIM at scale 5, 2x2 mean pooling."""
    ref = phantom((176, 192), seed=10)
    pred = ref + np.random.default_rng(11).normal(0, 120, ref.shape)
    x, y = prep(pred), prep(ref)
    w = M.MS_SSIM_WEIGHTS
    want = 1.0
    for j in range(5):
        if j < 4:
            want *= max(sk_cs_mean(x, y), 0.0) ** w[j]
            x, y = downscale_local_mean(x, (2, 2)), downscale_local_mean(y, (2, 2))
        else:
            want *= max(sk_ssim(x, y), 0.0) ** w[j]
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.MetricWarning)  # all 5 scales fit: no warning
        got = M.ms_ssim(pred, ref)
    assert got == pytest.approx(want, abs=1e-6)


def test_ms_ssim_two_scales_renormalised_and_per_slice_mean():
    vol_r = phantom((3, 24, 30), seed=12)
    vol_p = vol_r + np.random.default_rng(13).normal(0, 150, vol_r.shape)
    w = np.array(M.MS_SSIM_WEIGHTS[:2]) / sum(M.MS_SSIM_WEIGHTS[:2])
    per_slice = []
    for z in range(3):
        x, y = prep(vol_p[z]), prep(vol_r[z])
        cs1 = sk_cs_mean(x, y)
        s2 = sk_ssim(downscale_local_mean(x, (2, 2)), downscale_local_mean(y, (2, 2)))
        per_slice.append(max(cs1, 0) ** w[0] * max(s2, 0) ** w[1])
    with pytest.warns(M.MetricWarning, match="2 of 5 scales"):
        got = M.ms_ssim(vol_p, vol_r)
    assert got == pytest.approx(np.mean(per_slice), abs=1e-6)
    # 2D call on one slice gives that slice's value
    with pytest.warns(M.MetricWarning):
        assert M.ms_ssim(vol_p[1], vol_r[1]) == pytest.approx(per_slice[1], abs=1e-6)


def test_ms_ssim_decreases_with_noise():
    ref = phantom((64, 64), seed=14)
    noise = np.random.default_rng(15).standard_normal(ref.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricWarning)
        vals = [M.ms_ssim(ref + s * noise, ref) for s in (0.0, 20.0, 80.0, 200.0, 600.0)]
    assert vals[0] == pytest.approx(1.0, abs=1e-12)
    assert all(a > b for a, b in zip(vals, vals[1:])), vals


def test_ms_ssim_nan_when_no_scale_fits():
    a = np.zeros((4, 10, 30))
    with pytest.warns(M.MetricWarning, match="not even one scale"):
        assert math.isnan(M.ms_ssim(a, a))


# ---------------------------------------------------------------------------------------------- evaluate

def test_evaluate_3d_mode_and_values(pair3d):
    pred, ref = pair3d
    mask = ref > -500
    mask[0] = False  # one slice without mask voxels -> not in per_slice
    res = M.evaluate(pred, ref, mask)
    assert set(res) >= {"mae_hu", "me_hu", "psnr_db", "ssim", "ms_ssim", "ssim_mode", "per_slice", "voxels"}
    d = pred[mask] - ref[mask]
    assert res["voxels"] == int(mask.sum())
    assert res["mae_hu"] == pytest.approx(np.abs(d).mean(), rel=1e-12)
    assert res["me_hu"] == pytest.approx(d.mean(), rel=1e-12)
    assert res["psnr_db"] == pytest.approx(
        peak_signal_noise_ratio(prep(ref, False)[mask], prep(pred, False)[mask], data_range=R), abs=1e-9)
    assert res["ssim_mode"] == "3d"  # 14 slices >= 11
    assert res["ssim"] == pytest.approx(sk_masked_mean(pred, ref, mask), abs=1e-6)
    expected_slices = [z for z in range(ref.shape[0]) if mask[z].any()]
    assert 0 not in expected_slices and len(expected_slices) >= 8
    assert [s["index"] for s in res["per_slice"]] == expected_slices
    assert res["slices"] == len(expected_slices)
    for row in res["per_slice"]:
        z, mz = row["index"], mask[row["index"]]
        dz = pred[z][mz] - ref[z][mz]
        assert row["mae_hu"] == pytest.approx(np.abs(dz).mean(), rel=1e-12)
        assert row["me_hu"] == pytest.approx(dz.mean(), rel=1e-12)
        assert row["psnr_db"] == pytest.approx(
            peak_signal_noise_ratio(prep(ref[z], False)[mz], prep(pred[z], False)[mz], data_range=R), abs=1e-9)
        assert row["ssim"] == pytest.approx(sk_masked_mean(pred[z], ref[z], mz), abs=1e-6)
    with pytest.warns(M.MetricWarning):
        assert res["ms_ssim"] == pytest.approx(M.ms_ssim(pred, ref, mask), abs=1e-12)
    assert res["ms_ssim_scales"] == M.ms_ssim_scales(pred.shape[1:])


def test_evaluate_few_slices_uses_2d_mean():
    ref = phantom((5, 32, 32), seed=16)
    pred = ref + np.random.default_rng(17).normal(0, 100, ref.shape)
    res = M.evaluate(pred, ref)
    assert res["ssim_mode"] == "2d-slice-mean"
    per = [sk_ssim(prep(pred[z]), prep(ref[z])) for z in range(5)]
    assert res["ssim"] == pytest.approx(np.mean(per), abs=1e-6)
    assert [r["ssim"] for r in res["per_slice"]] == pytest.approx(per, abs=1e-6)
    assert res["voxels"] == pred.size


def test_evaluate_identical_and_blockwise(monkeypatch):
    ref = phantom((12, 24, 24), seed=18)
    res = M.evaluate(ref, ref.copy())
    assert res["mae_hu"] == 0 and res["me_hu"] == 0 and res["psnr_db"] == math.inf
    assert res["ssim"] == pytest.approx(1.0, abs=1e-12) and res["ms_ssim"] == pytest.approx(1.0, abs=1e-12)
    pred = ref + 50.0
    full = M.evaluate(pred, ref, ref > -500)
    monkeypatch.setattr(M, "_BLOCK_VOXELS", 24 * 24 * 2)
    blocked = M.evaluate(pred, ref, ref > -500)
    for key in ("mae_hu", "me_hu", "psnr_db", "ssim", "ms_ssim"):
        assert blocked[key] == pytest.approx(full[key], abs=1e-9)
    assert full["me_hu"] == pytest.approx(50.0) and full["mae_hu"] == pytest.approx(50.0)


def test_evaluate_accepts_volumes_and_checks_geometry():
    ref = phantom((4, 16, 16), seed=19)
    g = make_geometry((16, 16, 4), spacing=(1.0, 1.0, 2.5))
    res = M.evaluate(Volume(ref + 50.0, g), Volume(ref, g), Volume((ref > -500).astype(np.uint8), g))
    assert res["me_hu"] == pytest.approx(50.0)
    g2 = make_geometry((16, 16, 4), spacing=(1.0, 1.0, 3.0))
    with pytest.raises(InputError, match="different grids"):
        M.evaluate(Volume(ref, g2), Volume(ref, g))
    with pytest.raises(InputError, match="different grids"):
        M.evaluate(Volume(ref, g), Volume(ref, g), Volume(ref > 0, g2))


# ---------------------------------------------------------------------------------------------- errors

def test_shape_mismatch_names_both_shapes():
    with pytest.raises(InputError) as err:
        M.evaluate(np.zeros((4, 16, 16)), np.zeros((4, 16, 17)))
    assert "(4, 16, 16)" in str(err.value) and "(4, 16, 17)" in str(err.value)
    for fn in (M.mae, M.me, M.psnr, M.ssim, M.ms_ssim):
        with pytest.raises(InputError):
            fn(np.zeros((12, 12)), np.zeros((12, 13)))


def test_empty_mask_and_bad_mask_shape():
    a = np.zeros((4, 16, 16))
    for fn in (M.mae, M.me, M.psnr, M.ssim, M.evaluate):
        with pytest.raises(InputError, match="empty"):
            fn(a, a, np.zeros(a.shape, bool))
    with pytest.raises(InputError, match="mask shape"):
        M.mae(a, a, np.ones((4, 16, 15), bool))


def test_other_input_errors():
    a = np.zeros((4, 16, 16))
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        M.mae(bad, a)
    with pytest.raises(InputError, match="too small"):
        M.ssim(np.zeros((12, 10)), np.zeros((12, 10)))
    with pytest.raises(InputError, match="too small"):
        M.ssim(np.zeros((5, 20, 20)), np.zeros((5, 20, 20)))  # 3D SSIM needs >= 11 slices
    with pytest.raises(InputError, match="3D"):
        M.evaluate(np.zeros((16, 16)), np.zeros((16, 16)))
    with pytest.raises(InputError):
        M.psnr(a, a, data_range=0)
    with pytest.raises(InputError):
        M.ssim(np.zeros((12, 12)), np.zeros((12, 12)), gaussian_sigma=-1)


# ---------------------------------------------------------------------------------------------- reporting

def test_mean_std_against_numpy():
    vals = [1.0, 2.5, 4.0, float("nan"), 7.25]
    m, s = M.mean_std(vals)
    finite = np.array([1.0, 2.5, 4.0, 7.25])
    assert m == pytest.approx(finite.mean()) and s == pytest.approx(finite.std())
    assert all(math.isnan(v) for v in M.mean_std([]))
    assert M.mean_std([30.0, math.inf])[0] == math.inf


def test_format_table_formats_by_column():
    rows = [
        {"index": 3, "mae_hu": 51.2345, "me_hu": -4.96, "psnr_db": 27.12345, "ssim": 0.912345,
         "ms_ssim": math.nan, "per_slice": [1, 2]},
        {"index": 12, "mae_hu": 0.0, "me_hu": 0.0, "psnr_db": math.inf, "ssim": 1.0, "ms_ssim": 1.0,
         "ssim_mode": "3d"},
    ]
    text = M.format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["index", "mae_hu", "me_hu", "psnr_db", "ssim", "ms_ssim", "ssim_mode"]
    assert set(lines[1]) <= {"|", "-", ":"}
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first == ["3", "51.2", "-5.0", "27.12", "0.9123", "nan", ""]
    second = [c.strip() for c in lines[3].strip("|").split("|")]
    assert second == ["12", "0.0", "0.0", "inf", "1.0000", "1.0000", "3d"]
    only = M.format_table(rows, columns=["mae_hu"]).splitlines()
    assert [c.strip() for c in only[2].strip("|").split("|")] == ["51.2"]
    assert M.format_table([{"mae_hu": M.mean_std([10.0, 20.0])}]).splitlines()[2].strip("| ").startswith(
        "15.0 ± 5.0")
