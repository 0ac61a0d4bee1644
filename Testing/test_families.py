"""The wide training distribution: MR signal equations, phantom families, the real-CT MR simulation and the
TorchIO augmentation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from MRtoCTSynthesisLib.data.phantom import CORTICAL, FAT, FLUID, MUSCLE, TRABECULAR
from MRtoCTSynthesisLib.data.phantom.families import FAMILIES, generate_family_case
from MRtoCTSynthesisLib.data.phantom.mr_physics import (
    FAT_COMPARTMENT,
    GYROMAGNETIC_MHZ_PER_T,
    TISSUES,
    Protocol,
    Tissue,
    draw_protocol,
    signal,
)
from MRtoCTSynthesisLib.errors import InputError

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- signal equations
def test_spin_echo_limits_are_proton_density_t1_and_t2_decay():
    t = Tissue(pd=0.8, ff=0.0, t1=900.0, t2=70.0)
    assert signal(t, Protocol("se", tr=1e7, te=0.0)) == pytest.approx(0.8)               # PD weighting limit
    assert signal(t, Protocol("se", tr=900.0, te=0.0)) == pytest.approx(0.8 * (1 - math.exp(-1)))  # TR = T1
    assert signal(t, Protocol("se", tr=1e7, te=70.0)) == pytest.approx(0.8 * math.exp(-1))         # TE = T2


def test_spoiled_gradient_echo_peaks_at_the_ernst_angle():
    t = Tissue(pd=1.0, ff=0.0, t1=1000.0, t2=50.0)
    tr = 10.0
    flips = np.linspace(1, 40, 391)
    s = [signal(t, Protocol("gre", tr=tr, te=0.0, flip=f)) for f in flips]
    ernst = math.degrees(math.acos(math.exp(-tr / 1000.0)))
    assert abs(flips[int(np.argmax(s))] - ernst) < 0.2


def test_chemical_shift_in_and_opposed_phase_and_dixon():
    """Half a period of the fat-water frequency difference after excitation gives |W - F|, a full one W + F."""
    t = Tissue(pd=1.0, ff=0.3, t1=800.0, t2=1e9, t2s_ratio=1.0)
    df_khz = 3.4 * GYROMAGNETIC_MHZ_PER_T * 1.5 * 1e-3  # kHz at 1.5 T, so 1 / df is in ms
    fat = dataclasses.replace(FAT_COMPARTMENT, t2=1e9, t2s_ratio=1.0)
    base = dict(tr=8.0, flip=12.0)

    def comp(x, te):  # one compartment's gradient-echo signal, as the module writes it
        e1 = math.exp(-8.0 / x.t1)
        a = math.radians(12.0)
        return math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1)

    import MRtoCTSynthesisLib.data.phantom.mr_physics as mp
    orig = mp.FAT_COMPARTMENT
    mp.FAT_COMPARTMENT = fat
    try:
        w, f = 0.7 * comp(t, 0), 0.3 * comp(fat, 0)
        opp = signal(t, Protocol("gre", b0=1.5, te=0.5 / df_khz, **base))
        inp = signal(t, Protocol("gre", b0=1.5, te=1.0 / df_khz, **base))
        assert opp == pytest.approx(abs(w - f), rel=1e-6) and inp == pytest.approx(w + f, rel=1e-6)
        d = {k: signal(t, Protocol("dixon", b0=1.5, te=2.0, dixon_image=k, **base)) for k in ("water", "fat", "in",
                                                                                              "opp")}
        assert d["water"] == pytest.approx(w) and d["fat"] == pytest.approx(f)
        assert d["in"] == pytest.approx(w + f) and d["opp"] == pytest.approx(abs(w - f))
    finally:
        mp.FAT_COMPARTMENT = orig


def test_contrasts_order_tissues_as_on_clinical_images():
    rng = np.random.default_rng(0)
    t1 = {k: signal(TISSUES[k], draw_protocol(rng, "t1_se", 1.5)) for k in (FAT, MUSCLE, FLUID, CORTICAL)}
    t2 = {k: signal(TISSUES[k], draw_protocol(rng, "t2_se", 3.0)) for k in (FAT, MUSCLE, FLUID, CORTICAL)}
    assert t1[FAT] > t1[MUSCLE] > t1[FLUID] > t1[CORTICAL]      # T1w: fat bright, fluid dark
    assert t2[FLUID] > t2[FAT] > t2[MUSCLE] > t2[CORTICAL]      # T2w: fluid brightest, muscle dark
    assert all(signal(TISSUES[CORTICAL], draw_protocol(rng, k, 1.5)) < 0.02 for k in
               ("t1_se", "t2_se", "pd_se", "t1_gre", "dixon", "ir_t1", "bssfp"))  # cortex dark everywhere
    with pytest.raises(ValueError):
        draw_protocol(rng, "stir", 1.5)


# ---------------------------------------------------------------------------------------------- families
SMALL = dataclasses.replace(FAMILIES["wide"], name="wide_small_test", inplane_mm=(6.0, 8.0), slice_mm=(6.0, 8.0),
                            slab_mm=(24.0, 30.0))


def test_family_cases_are_deterministic_paired_and_vary():
    a, b = generate_family_case(SMALL, 7), generate_family_case(SMALL, 7)
    np.testing.assert_array_equal(a.mr.array, b.mr.array)
    np.testing.assert_array_equal(a.ct.array, b.ct.array)
    assert a.mr.geometry == a.ct.geometry == a.mask.geometry
    metas = [generate_family_case(SMALL, s).meta for s in range(8)]
    assert len({m["contrast"] for m in metas}) >= 4                      # contrasts vary per case
    assert len({tuple(m["acquisition"]["spacing"]) for m in metas}) == 8  # and the grid
    ct = a.ct.array[a.mask.array > 0]
    assert ct.max() > 700 and np.median(ct) < 100                       # bone and soft tissue in HU


def test_heldout_families_lie_outside_the_training_family():
    wide = FAMILIES["wide"]
    large, small = FAMILIES["heldout_large_t2"], FAMILIES["heldout_small_bssfp"]
    assert "bssfp" not in wide.protocols and small.protocols == {"bssfp": 1.0}
    assert large.body_scale[0] > wide.body_scale[1] and small.body_scale[1] < wide.body_scale[0]
    assert large.inplane_mm[1] < wide.inplane_mm[0]
    assert wide.body_exponent is None and large.body_exponent[0] > 2.9  # the anatomy's own range is 2.3-2.9
    with pytest.raises(InputError):
        generate_family_case("no_such_family", 1)


def test_body_scale_changes_the_body_size():
    base = dataclasses.replace(SMALL, name="scale_test", fov_crop_fraction=0.0, oblique_fraction=0.0,
                               plane_weights=(1.0, 0.0, 0.0), inplane_mm=(6.0, 6.0), fov_margin_mm=(200.0, 200.0))
    areas = []
    for s in (0.8, 1.2):
        case = generate_family_case(dataclasses.replace(base, body_scale=(s, s), z_scale=(1.0, 1.0)), 3)
        areas.append(case.mask.array.sum() / case.mask.array.shape[0])
    assert areas[1] / areas[0] == pytest.approx((1.2 / 0.8) ** 2, rel=0.1)


# ---------------------------------------------------------------------------------------------- real CT
def test_tissue_fractions_follow_the_hu_path_and_sum_to_one():
    from MRtoCTSynthesisLib.data.real_ct import tissue_fractions

    hu = np.array([-1000.0, -550.0, -100.0, -45.0, 45.0, 700.0, 1100.0, 2000.0], np.float32)[None, None]
    fr = tissue_fractions(hu, np.ones(hu.shape, bool))
    total = sum(fr.values())
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert fr[FAT][0, 0, 2] == pytest.approx(1.0) and fr[MUSCLE][0, 0, 4] == pytest.approx(1.0)
    assert fr[FAT][0, 0, 3] == pytest.approx(0.5) and fr[FLUID][0, 0, 3] == pytest.approx(0.5)
    assert fr[TRABECULAR][0, 0, 5] == pytest.approx(0.5) and fr[CORTICAL][0, 0, 5] == pytest.approx(0.5)
    assert fr[CORTICAL][0, 0, 7] == pytest.approx(1.0)


def test_mr_simulation_from_a_ct_volume():
    """A synthetic 'CT' (a fat-rimmed muscle cylinder with a bone ring) through the real-CT MR simulation."""
    from MRtoCTSynthesisLib.data.real_ct import simulate_mr
    from MRtoCTSynthesisLib.io.volume import Volume, make_geometry

    n, s = 80, 4.0
    c = (np.arange(n) + 0.5) * s - n * s / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    r = np.sqrt(yy ** 2 + xx ** 2)
    sl = np.select([r < 30, r < 40, r < 120, r < 140], [300.0, 1200.0, 50.0, -100.0], -1000.0).astype(np.float32)
    ct = Volume(np.repeat(sl[None], 12, axis=0), make_geometry((n, n, 12), (s, s, 5.0), (-160, -160, -30),
                                                               (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    case = simulate_mr(ct, seed=3)
    again = simulate_mr(ct, seed=3)
    np.testing.assert_array_equal(case.mr.array, again.mr.array)
    body = case.mask.array > 0
    assert body.any() and case.mr.geometry == case.ct.geometry
    ring = body & (case.ct.array > 900)
    if ring.any():  # cortical bone is dark on every simulated contrast
        assert np.median(case.mr.array[ring]) < np.percentile(case.mr.array[body], 60)


def test_real_ct_fetch_and_simulation():
    """The pinned TotalSegmentator sdist (cached, or fetched by pip) through the MR simulation."""
    from MRtoCTSynthesisLib.data.real_ct import load_real_ct, simulate_mr

    try:
        ct = load_real_ct("abdpelvis", fetch=True)  # pip download, pinned version + sha256, into the cache
    except InputError as e:
        pytest.skip(f"real CT not cached (offline or not fetched yet; run scripts/fetch_real_data.py): {e.problem}")
    assert ct.array.shape == (112, 101, 122) and tuple(ct.geometry.spacing) == (3.0, 3.0, 3.0)
    assert ct.array.min() < -900 and ct.array.max() > 1000  # air and bone in HU
    case = simulate_mr(ct, seed=0)
    assert case.mr.array.shape == case.ct.array.shape and case.mask.array.any()


# ---------------------------------------------------------------------------------------------- augmentation
torchio = pytest.importorskip("torchio", reason="TorchIO is in the 'train' extra (pip install -e '.[train]')")


def _pair():
    g = torch.Generator().manual_seed(0)
    mr = torch.rand(1, 32, 32, generator=g) * 2 - 1
    return mr, mr.clone()


@pytest.mark.parametrize("name", ["bias_field", "gamma", "noise", "blur", "anisotropy", "motion", "ghosting"])
def test_mr_only_transforms_leave_the_ct_alone(name):
    from MRtoCTSynthesisLib.data.augment import build_augmentation

    mr, ct = _pair()
    torch.manual_seed(1)
    m, c = build_augmentation({name: {"p": 1.0}})(mr, ct)
    assert torch.equal(c, ct) and not torch.equal(m, mr)
    assert m.shape == mr.shape and m.min() >= -1 and m.max() <= 1


def test_affine_moves_mr_and_ct_together_and_is_seeded():
    from MRtoCTSynthesisLib.data.augment import build_augmentation

    mr, ct = _pair()
    aug = build_augmentation({"affine": {"p": 1.0, "degrees": 20, "scales": 0.2}})
    torch.manual_seed(5)
    m, c = aug(mr, ct)
    assert not torch.equal(m, mr) and torch.allclose(m, c, atol=1e-6)  # same image in, same warp out
    torch.manual_seed(5)
    m2, _ = aug(mr, ct)
    assert torch.equal(m, m2)


def test_augmentation_config_errors():
    from MRtoCTSynthesisLib.data.augment import build_augmentation

    assert build_augmentation(None) is None and build_augmentation({"gamma": {"p": 0}}) is None
    with pytest.raises(InputError, match="unknown augmentation"):
        build_augmentation({"elastic": {"p": 0.5}})
    with pytest.raises(InputError, match="probability"):
        build_augmentation({"gamma": {"p": 2}})
