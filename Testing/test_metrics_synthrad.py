"""The SynthRAD metric presets against independent implementations: scikit-image's structural_similarity
(7-voxel uniform window, sample covariance -- its defaults, which the SynthRAD code uses) and
peak_signal_noise_ratio, scipy's fftconvolve for the MS-SSIM down-sampling, numpy for clipping, masking and
cropping. Agreement to 1e-4 is the issue's requirement; float64 on both sides gives ~1e-12."""

import math

import numpy as np
import pytest
from scipy.signal import fftconvolve
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.pipeline import metrics as M


def _pair(shape, seed=0, noise=60.0):
    """A CT-like volume (air, soft tissue, bone blobs; values beyond both clipping ranges) and a noisy,
    slightly shifted prediction, plus a body mask."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids[-2:])
    body = r2 < 0.7
    ref = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, shape)
    ref[(grids[-1] - 0.2) ** 2 + grids[-2] ** 2 < 0.05] = 3400.0  # above 3071 and 3000: clipping matters
    ref[(grids[-1] + 0.3) ** 2 + (grids[-2] - 0.1) ** 2 < 0.03] = 900.0
    pred = np.roll(ref, 1, axis=-1) + rng.normal(0, noise, shape)
    pred.flat[0] = -1500.0  # below -1024
    return pred.astype(np.float32), ref.astype(np.float32), body


def _prep(pred, ref, mask, lo, hi, fill=True):
    p = np.clip(pred.astype(np.float64), lo, hi)
    r = np.clip(ref.astype(np.float64), lo, hi)
    if fill and mask is not None:
        p = np.where(mask, p, lo)
        r = np.where(mask, r, lo)
    return p - lo, r - lo


@pytest.mark.parametrize("shape", [(9, 40, 36), (48, 44)])
def test_synthrad2023_ssim_matches_scikit_image(shape):
    pred, ref, mask = _pair(shape)
    p, r = _prep(pred, ref, mask, -1024.0, 3000.0)
    full, smap = structural_similarity(r, p, data_range=4024.0, full=True)
    expect = crop(smap, 3)[crop(mask, 3)].mean(dtype=np.float64)
    ours = M.synthrad_ssim(pred, ref, mask, "synthrad2023")
    assert ours == pytest.approx(expect, abs=1e-10)
    # without a mask: scikit-image's mean SSIM of the clipped, shifted images
    p0, r0 = _prep(pred, ref, None, -1024.0, 3000.0)
    assert M.synthrad_ssim(pred, ref, None) == pytest.approx(structural_similarity(r0, p0, data_range=4024.0),
                                                             abs=1e-10)
    # and it is a different number from the default preset's Gaussian-window SSIM
    if len(shape) == 2:
        assert abs(M.ssim(pred, ref, mask) - ours) > 1e-3


def test_synthrad_psnr_matches_scikit_image_and_differs_from_default():
    pred, ref, mask = _pair((6, 40, 40))
    for edition, (lo, hi) in M.SYNTHRAD_RANGES.items():
        p, r = _prep(pred, ref, None, lo, hi, fill=False)
        expect = peak_signal_noise_ratio(r[mask], p[mask], data_range=hi - lo)
        assert M.synthrad_psnr(pred, ref, mask, edition) == pytest.approx(expect, abs=1e-10)
    # 2023: [-1024, 3000] with range 4024 vs the default [-1024, 3071] / 4095
    assert M.synthrad_psnr(pred, ref, mask, "synthrad2023") != pytest.approx(M.psnr(pred, ref, mask), abs=1e-3)
    assert M.synthrad_psnr(pred, ref, mask, "synthrad2025") == pytest.approx(M.psnr(pred, ref, mask), abs=1e-10)


def test_synthrad_downsampling_is_their_fft_box_filter():
    rng = np.random.default_rng(1)
    for shape in [(97, 97, 97), (49, 50, 25), (7, 8, 9)]:
        a = rng.normal(size=shape)
        ref = fftconvolve(a, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2]
        np.testing.assert_allclose(M._synthrad_downsample(a), ref, atol=1e-12)


def _ms_ssim_reference(pred, ref, mask, lo, hi, weights=M.MS_SSIM_WEIGHTS):
    """MS-SSIM composed from scikit-image SSIM maps (L C S = the SSIM map, so L^w C^w S^w = clip(map, 0)^w),
    scipy's fftconvolve down-sampling and numpy edge padding to 97."""
    p, r = _prep(pred, ref, mask, lo, hi)
    m = mask.astype(float)
    pads = [(max(0, (97 - n) // 2), max(0, 97 - n - (97 - n) // 2)) for n in p.shape]
    p, r, m = (np.pad(a, pads, mode="edge") for a in (p, r, m))
    box = np.ones((2, 2, 2)) / 8
    total = 1.0
    for j, w in enumerate(weights):
        _, smap = structural_similarity(r, p, data_range=hi - lo, full=True)
        vmap = np.clip(smap, 0, None) ** w
        total *= float(np.clip(crop(vmap, 3)[crop(m, 3).astype(bool)].mean(dtype=np.float64), 0, 1))
        if j < len(weights) - 1:
            p = fftconvolve(p, box, mode="same")[::2, ::2, ::2]
            r = fftconvolve(r, box, mode="same")[::2, ::2, ::2]
            m = m[::2, ::2, ::2]
    return total


def test_synthrad2025_ms_ssim_matches_the_composed_reference():
    pred, ref, mask = _pair((12, 60, 50))
    expect = _ms_ssim_reference(pred, ref, mask, -1024.0, 3071.0)
    ours = M.synthrad_ms_ssim(pred, ref, mask, "synthrad2025")
    assert ours == pytest.approx(expect, abs=1e-4)
    assert 0.0 < ours < 1.0
    # one scale with weight 1 is the masked SSIM of the padded volume
    one = M.synthrad_ms_ssim(pred, ref, mask, "synthrad2025", weights=(1.0,))
    assert one == pytest.approx(_ms_ssim_reference(pred, ref, mask, -1024.0, 3071.0, weights=(1.0,)), abs=1e-10)
    assert M.synthrad_ms_ssim(ref, ref, mask) == pytest.approx(1.0, abs=1e-12)
    noisier, _, _ = _pair((12, 60, 50), noise=300.0)
    assert M.synthrad_ms_ssim(noisier, ref, mask) < ours


def test_evaluate_presets_say_what_produced_the_numbers():
    pred, ref, mask = _pair((8, 40, 40))
    default = M.evaluate(pred, ref, mask)
    s23 = M.evaluate(pred, ref, mask, preset="synthrad")
    s25 = M.evaluate(pred, ref, mask, preset="synthrad2025")
    assert (default["preset"], s23["preset"], s25["preset"]) == ("default", "synthrad2023", "synthrad2025")
    assert s23["mae_hu"] == pytest.approx(default["mae_hu"], rel=1e-12)  # MAE: raw HU inside the mask for all
    assert s23["data_range"] == 4024.0 and s25["data_range"] == 4095.0
    assert s23["ssim"] == pytest.approx(M.synthrad_ssim(pred, ref, mask), abs=1e-12) and s23["ssim_mode"] == "3d"
    assert math.isnan(s23["ms_ssim"]) and math.isnan(s25["ssim"])
    assert s25["ms_ssim"] == pytest.approx(M.synthrad_ms_ssim(pred, ref, mask), abs=1e-12)
    few = M.evaluate(pred[:4], ref[:4], mask[:4], preset="synthrad2023")  # fewer than 7 slices: 2D mean
    assert few["ssim_mode"].startswith("2d") and few["ssim"] == pytest.approx(
        np.mean([M.synthrad_ssim(pred[z], ref[z], mask[z]) for z in range(4)]), abs=1e-12)
    assert [s["index"] for s in s23["per_slice"]] == list(range(8))
    with pytest.raises(InputError):
        M.evaluate(pred, ref, mask, preset="brats")


def test_cli_metrics_flag_writes_the_preset(tmp_path):
    import json

    from MRtoCTSynthesisLib.apps.cli import main
    from MRtoCTSynthesisLib.io.volume import Volume, make_geometry, write_volume

    pred, ref, mask = _pair((8, 32, 32))
    geom = make_geometry((32, 32, 8))
    for name, arr in (("p", pred), ("r", ref), ("m", mask.astype(np.uint8))):
        write_volume(Volume(arr, geom), tmp_path / f"{name}.nii.gz")
    for preset, expect in (("synthrad", "synthrad2023"), ("synthrad2025", "synthrad2025"), ("default", "default")):
        out = tmp_path / f"{preset}.json"
        assert main(["evaluate", "--pred", str(tmp_path / "p.nii.gz"), "--ref", str(tmp_path / "r.nii.gz"),
                     "--mask", str(tmp_path / "m.nii.gz"), "--metrics", preset, "--json", str(out)]) == 0
        doc = json.loads(out.read_text())
        assert doc["preset"] == expect
        direct = M.evaluate(pred, ref, mask, preset=preset)
        assert doc["psnr_db"] == pytest.approx(direct["psnr_db"], abs=1e-6)
