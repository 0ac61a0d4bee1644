"""Procedural MR/CT phantoms: tissue values, MR contrast, noise statistics, grid independence, files."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import rotation_direction
from scipy import ndimage

from MRtoCTSynthesisLib.data.phantom import (
    AIR,
    CORTICAL,
    FAT,
    FLUID,
    GAS,
    GREY_MATTER,
    MUSCLE,
    ORGAN,
    TRABECULAR,
    WHITE_MATTER,
    generate_case,
    generate_dataset,
    phantom_geometry,
    write_case,
)
from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.io.volume import read_volume

# Literature CT values (HU) of each tissue; windows wide enough for per-case variation and noise.
HU_WINDOWS = {
    AIR: (-1005, -995),
    FAT: (-125, -75),
    MUSCLE: (35, 65),
    FLUID: (-10, 25),
    ORGAN: (20, 55),
    TRABECULAR: (150, 500),
}
_CUBE = np.ones((3, 3, 3), bool)


def _interior(labels, k):
    """Voxels of label k whose whole 3x3x3 neighbourhood is label k (free of partial volume)."""
    return ndimage.binary_erosion(labels == k, _CUBE)


@pytest.fixture(scope="module")
def pelvis():
    return generate_case(3, "pelvis")


@pytest.fixture(scope="module")
def head():
    return generate_case(5, "head", size=(96, 112, 72), spacing=(2.5, 2.5, 2.5))


def test_volumes_share_the_default_centred_grid(pelvis):
    g = pelvis.geometry
    assert g.size == (128, 128, 48) and g.spacing == (3.0, 3.0, 3.0)
    # closed form: the field of view is centred on (0, 0, 0)
    np.testing.assert_allclose(g.origin, [-127 * 1.5, -127 * 1.5, -47 * 1.5])
    for vol in (pelvis.ct, pelvis.mr_t1, pelvis.mr_t2, pelvis.mask, pelvis.labels):
        assert vol.geometry == g and vol.array.shape == (48, 128, 128)
    assert pelvis.ct.array.dtype == np.float32 and pelvis.labels.array.dtype == np.uint8
    assert pelvis.mask.array.dtype == np.uint8
    assert set(np.unique(pelvis.mask.array)) == {0, 1}


def test_pelvis_has_every_tissue_class(pelvis):
    present = set(np.unique(pelvis.labels.array).tolist())
    assert {AIR, FAT, MUSCLE, FLUID, ORGAN, TRABECULAR, CORTICAL, GAS} <= present
    # bone is a plausible share of the body: several percent, not a blob and not a speck
    body = pelvis.mask.array.astype(bool)
    bone = np.isin(pelvis.labels.array, [TRABECULAR, CORTICAL])
    assert 0.02 < bone.sum() / body.sum() < 0.15


def test_ct_values_per_tissue(pelvis):
    ct, lab = pelvis.ct.array, pelvis.labels.array
    med = {}
    for k, (lo, hi) in HU_WINDOWS.items():
        sel = _interior(lab, k)
        assert sel.sum() > 200, k
        med[k] = float(np.median(ct[sel]))
        assert lo <= med[k] <= hi, (k, med[k])
    # cortex and gas are thin at 3 mm: their raw medians carry partial volume but stay in range
    cort = float(np.median(ct[lab == CORTICAL]))
    gas = float(np.median(ct[lab == GAS]))
    assert 600 < cort < 1600 and -1000 <= gas < -450
    # ordering of the attenuation of the tissues
    assert med[AIR] < gas < med[FAT] < med[FLUID] < med[ORGAN] < med[TRABECULAR] < cort
    assert med[FLUID] < med[MUSCLE] < med[TRABECULAR]
    assert ct.min() >= -1024 and ct.max() <= 3071


def _fine_patch_at(case, label, pick):
    """The same seed resampled on a 1 mm patch centred on a voxel of ``label`` chosen by ``pick``."""
    lab, ct = case.labels.array, case.ct.array
    idx = np.argwhere(lab == label)
    k, j, i = idx[pick(ct[lab == label])]
    centre = case.geometry.index_to_physical() @ np.array([i, j, k, 1.0])
    n = 24
    return generate_case(case.meta["seed"], case.meta["region"], size=(n, n, n), spacing=(1.0, 1.0, 1.0),
                         origin=tuple(centre[:3] - (n - 1) / 2))


def test_cortical_bone_and_gas_reach_their_hu_at_fine_resolution(pelvis):
    # thickest cortex (brightest voxel) and largest gas pocket (darkest), re-sampled at 1 mm
    fine = _fine_patch_at(pelvis, CORTICAL, np.argmax)
    sel = _interior(fine.labels.array, CORTICAL)
    assert sel.sum() > 20
    assert 1000 <= np.median(fine.ct.array[sel]) <= 1500
    fine = _fine_patch_at(pelvis, GAS, np.argmin)
    sel = _interior(fine.labels.array, GAS)
    assert sel.sum() > 20
    assert -1000 <= np.median(fine.ct.array[sel]) <= -820


def test_mr_contrast_relations(pelvis):
    lab = pelvis.labels.array
    t1 = {k: float(np.median(pelvis.mr_t1.array[_interior(lab, k)])) for k in (FAT, MUSCLE, FLUID, AIR)}
    t2 = {k: float(np.median(pelvis.mr_t2.array[_interior(lab, k)])) for k in (FAT, MUSCLE, FLUID, AIR)}
    # T1: fat bright, fluid dark; T2: fluid brightest, fat bright-ish, muscle dark
    assert t1[FAT] > 1.8 * t1[MUSCLE] and t1[FLUID] < 0.6 * t1[MUSCLE]
    assert t2[FLUID] > 1.3 * t2[FAT] > 1.3 * t2[MUSCLE] and t2[FLUID] > 3 * t2[MUSCLE]
    # bone: dark on both MR weightings, bright on CT; air is dark on MR
    cort = lab == CORTICAL
    for mr, ref in ((pelvis.mr_t1.array, t1), (pelvis.mr_t2.array, t2)):
        assert np.median(mr[cort]) < 0.6 * ref[MUSCLE]
        assert ref[AIR] < 0.2 * ref[MUSCLE]  # Rayleigh noise floor only
    assert np.median(pelvis.ct.array[cort]) > np.median(pelvis.ct.array[lab == MUSCLE]) + 500
    assert pelvis.mr_t1.array.min() >= 0 and pelvis.mr_t2.array.min() >= 0


def test_head_contrast(head):
    lab, ct = head.labels.array, head.ct.array
    present = set(np.unique(lab).tolist())
    assert {FAT, FLUID, TRABECULAR, CORTICAL, GAS, GREY_MATTER, WHITE_MATTER} <= present
    t1 = {k: float(np.median(head.mr_t1.array[_interior(lab, k)])) for k in (GREY_MATTER, WHITE_MATTER, FLUID)}
    t2 = {k: float(np.median(head.mr_t2.array[_interior(lab, k)])) for k in (GREY_MATTER, WHITE_MATTER, FLUID)}
    assert t1[WHITE_MATTER] > t1[GREY_MATTER] > t1[FLUID]          # T1: WM > GM > CSF
    assert t2[FLUID] > t2[GREY_MATTER] > t2[WHITE_MATTER]          # T2: CSF > GM > WM
    gm, wm = (float(np.median(ct[_interior(lab, k)])) for k in (GREY_MATTER, WHITE_MATTER))
    assert 30 <= gm <= 48 and 18 <= wm <= 36 and gm > wm          # grey matter denser than white
    assert np.median(ct[lab == CORTICAL]) > 700                   # skull
    assert np.median(ct[lab == GAS]) < -500                       # sinuses


def test_body_mask_covers_exactly_the_non_air_labels(pelvis, head):
    for case in (pelvis, head):
        body = case.mask.array.astype(bool)
        lab = case.labels.array
        assert np.all(lab[~body] == AIR) and np.all(lab[body] != AIR)
        # CT outside the body is air
        assert np.median(case.ct.array[~ndimage.binary_dilation(body, iterations=2)]) == pytest.approx(-1000, abs=3)


def test_same_seed_is_reproducible_and_seeds_differ():
    kw = dict(size=(48, 48, 16), spacing=(8.0, 8.0, 9.0))
    a, b, c = generate_case(11, **kw), generate_case(11, **kw), generate_case(12, **kw)
    for name in ("ct", "mr_t1", "mr_t2", "mask", "labels"):
        np.testing.assert_array_equal(getattr(a, name).array, getattr(b, name).array)
    assert a.meta == b.meta
    # another seed: another body outline and other bones (not just other noise)
    body_a, body_c = a.mask.array.astype(bool), c.mask.array.astype(bool)
    assert (body_a ^ body_c).sum() > 0.03 * body_a.sum()
    bone_a = np.isin(a.labels.array, [TRABECULAR, CORTICAL])
    bone_c = np.isin(c.labels.array, [TRABECULAR, CORTICAL])
    assert 2 * (bone_a & bone_c).sum() / (bone_a.sum() + bone_c.sum()) < 0.9


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_anatomy_is_the_same_on_an_oblique_grid():
    """The same seed on a rotated, finer, shifted grid resamples onto the default grid's anatomy."""
    ref = generate_case(7, size=(64, 64, 24), spacing=(6.0, 6.0, 6.0))
    obl = generate_case(7, size=(150, 150, 64), spacing=(3.2, 3.2, 3.2), origin=None,
                        direction=rotation_direction(8.0, -6.0, 25.0))
    img = sitk.GetImageFromArray(obl.labels.array.astype(np.int16))
    obl.geometry.apply_to(img)
    grid = sitk.Image(list(ref.geometry.size), sitk.sitkInt16)
    ref.geometry.apply_to(grid)
    back = sitk.GetArrayFromImage(sitk.Resample(img, grid, sitk.Transform(), sitk.sitkNearestNeighbor, -1))
    covered = back >= 0
    assert covered.mean() > 0.9
    lab = ref.labels.array
    for group in ([FAT], [MUSCLE], [TRABECULAR, CORTICAL], list(range(1, 10))):
        d = _dice(np.isin(lab, group) & covered, np.isin(back, group) & covered)
        assert d > 0.9, (group, d)
    # the oblique grid really is oblique: its voxels are not the reference's voxels permuted
    assert not np.allclose(obl.geometry.direction_matrix, np.eye(3), atol=0.05)


def test_rician_background_statistics(pelvis):
    body = pelvis.mask.array.astype(bool)
    bg = ~ndimage.binary_dilation(body, iterations=3)
    for w in ("t1", "t2"):
        m = pelvis.mr(w).array[bg].astype(np.float64)
        sigma = pelvis.meta["mr_noise_sigma"][w]
        assert m.min() >= 0 and m.size > 100000
        # Rayleigh (Rician with zero signal) closed forms: mean = sigma sqrt(pi/2), E[m^2] = 2 sigma^2,
        # and mean/std = sqrt(pi/2) / sqrt(2 - pi/2) for any sigma
        assert m.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)
        assert (m ** 2).mean() == pytest.approx(2 * sigma ** 2, rel=0.02)
        assert m.mean() / m.std() == pytest.approx(np.sqrt(np.pi / 2) / np.sqrt(2 - np.pi / 2), rel=0.02)


def test_mr_has_a_smooth_bias_field(pelvis):
    """Muscle signal varies slowly over the body (a multiplicative bias), not voxel to voxel."""
    lab = pelvis.labels.array
    sel = _interior(lab, MUSCLE)
    t1 = pelvis.mr_t1.array
    smooth = ndimage.uniform_filter(np.where(sel, t1, 0), 9) / np.maximum(ndimage.uniform_filter(sel * 1.0, 9), 1e-6)
    vals = smooth[ndimage.binary_erosion(sel, iterations=3)]
    spread = np.percentile(vals, 95) / np.percentile(vals, 5)
    assert 1.08 < spread < 2.0


def test_bad_parameters_are_refused():
    with pytest.raises(InputError, match="region"):
        generate_case(0, "knee")
    with pytest.raises(InputError, match="seed"):
        generate_case(-1)
    with pytest.raises(InputError, match="size"):
        generate_case(0, size=(10, 0, 4))
    with pytest.raises(InputError, match="spacing"):
        generate_case(0, size=(8, 8, 4), spacing=(1, -1, 1))
    with pytest.raises(InputError, match="direction"):
        phantom_geometry((8, 8, 4), direction=(1, 0, 0, 0, 2, 0, 0, 0, 1))


def test_write_case_round_trip(tmp_path):
    case = generate_case(2, size=(40, 36, 12), spacing=(9.0, 10.0, 11.0), direction=rotation_direction())
    paths = write_case(case, tmp_path / "c", mr_weighting="t1")
    assert {"mr", "ct", "mask", "mr_t1", "mr_t2", "labels"} <= set(paths)
    for name in ("mr", "ct", "mask", "mr_t1", "mr_t2", "labels"):
        assert paths[name].name == f"{name}.nii.gz" and paths[name].parent == tmp_path / "c"
        vol = read_volume(paths[name])
        g = vol.geometry
        assert g.size == case.geometry.size
        np.testing.assert_allclose(g.spacing, case.geometry.spacing, atol=1e-5)
        np.testing.assert_allclose(g.origin, case.geometry.origin, atol=1e-3)
        np.testing.assert_allclose(g.direction, case.geometry.direction, atol=1e-5)
    assert sitk.ReadImage(str(paths["ct"])).GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(read_volume(paths["ct"]).array, np.rint(case.ct.array))
    np.testing.assert_array_equal(read_volume(paths["mr"]).array, case.mr_t1.array)
    np.testing.assert_array_equal(read_volume(paths["labels"]).array, case.labels.array)
    np.testing.assert_array_equal(read_volume(paths["mask"]).array, case.mask.array)
    meta = json.loads(paths["meta"].read_text())
    assert meta["seed"] == 2 and meta["mr_weighting"] == "t1"
    with pytest.raises(InputError, match="weighting"):
        write_case(case, tmp_path / "d", mr_weighting="flair")


def test_generate_dataset_layout(tmp_path):
    calls = []
    folders = generate_dataset(tmp_path / "ds", 2, first_seed=4, size=(24, 24, 8), spacing=(16.0, 16.0, 18.0),
                               progress=lambda f, m: calls.append(f))
    assert [f.name for f in folders] == ["case_000", "case_001"]
    assert calls == [0.5, 1.0]
    for i, f in enumerate(folders):
        lab = read_volume(f / "labels.nii.gz").array
        np.testing.assert_array_equal(lab, generate_case(4 + i, size=(24, 24, 8), spacing=(16.0, 16.0, 18.0))
                                      .labels.array)
        assert (f / "mr.nii.gz").exists() and (f / "ct.nii.gz").exists() and (f / "mask.nii.gz").exists()
