"""MR -> CT registration: recovers a known rigid motion of a phantom MRI to sub-millimetre accuracy.

Thick oblique slices, the honest stop, the deformable modes and the quality numbers have their own
files (``test_registration_thick.py``, ``test_registration_quality.py``, ``test_registration_deformable.py``).
"""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from MRtoCTSynthesisLib.data.phantom import generate_case
from MRtoCTSynthesisLib.errors import CancelledError, InputError
from MRtoCTSynthesisLib.io.volume import Volume, make_geometry
from MRtoCTSynthesisLib.pipeline.registration import (
    load_transform,
    register,
    resample_moving,
    save_transform,
    target_registration_error,
)

# the known motion: 5-8 degree rotations and 10-15 mm shifts
TRUE_ANGLES_DEG = (-5.0, 6.0, 8.0)
TRUE_SHIFT_MM = (-12.0, 9.0, 10.0)


def _moved(volume: Volume, transform: sitk.Euler3DTransform) -> Volume:
    """``volume`` with its grid carried by ``transform`` (p -> R p + t): the content moves rigidly,
    without any interpolation, and ``transform`` maps each anatomical point of the original space to
    where it now lies."""
    g = volume.geometry
    rot = np.asarray(transform.GetMatrix()).reshape(3, 3)
    return Volume(volume.array, make_geometry(g.size, g.spacing, transform.TransformPoint(g.origin),
                                              tuple((rot @ g.direction_matrix).ravel())))


def _body_points(case, n, seed=0):
    idx = np.argwhere(case.mask.array > 0)
    pick = idx[np.random.default_rng(seed).choice(len(idx), n, replace=False)][:, ::-1]  # (i, j, k)
    m = case.geometry.index_to_physical()
    return (m[:3, :3] @ pick.T).T + m[:3, 3]


@pytest.fixture(scope="module")
def problem():
    # CT on a 4 mm grid is fixed; the MRI is the same subject's T1 sampled on its own, coarser grid
    ct_case = generate_case(3, size=(96, 96, 40), spacing=(4.0, 4.0, 4.0))
    mr_case = generate_case(3, size=(80, 80, 36), spacing=(4.6, 4.6, 4.4))
    true = sitk.Euler3DTransform((0.0, 0.0, 0.0), *np.deg2rad(TRUE_ANGLES_DEG), TRUE_SHIFT_MM)
    moving = _moved(mr_case.mr_t1, true)
    fractions = []
    result = register(ct_case.ct, moving, seed=0, progress=lambda f, msg: fractions.append(f))  # default: rigid
    return dict(ct_case=ct_case, moving=moving, true=true, result=result, fractions=fractions)


def test_recovers_known_rigid_motion(problem):
    pts = _body_points(problem["ct_case"], 200)
    before = target_registration_error(sitk.Transform(), problem["true"], pts)
    after = target_registration_error(problem["result"].transform, problem["true"], pts)
    assert before.mean() > 5.0          # the test starts far from the answer
    assert after.mean() < 0.7 and np.percentile(after, 95) < 1.5


def test_result_is_the_mri_on_the_ct_grid(problem):
    res, ct_case = problem["result"], problem["ct_case"]
    assert res.registered.geometry == ct_case.ct.geometry
    assert res.registered.array.shape == ct_case.ct.array.shape and res.registered.array.dtype == np.float32
    assert res.mode == "rigid" and isinstance(res.transform, sitk.Euler3DTransform)
    assert [s["name"] for s in res.stages] == ["rigid"] and np.isfinite(res.final_metric)
    assert res.warnings == [] and res.converged
    # independent reference: the phantom's own T1 generated directly on the CT grid (aligned by construction)
    ref = ct_case.mr_t1.array
    body = ct_case.mask.array > 0
    unregistered = resample_moving(problem["moving"], ct_case.ct.geometry, sitk.Transform(), default_value=0.0)

    def corr(a):
        return np.corrcoef(a[body], ref[body])[0, 1]

    assert corr(res.registered.array) > 0.85
    assert corr(res.registered.array) > corr(unregistered.array) + 0.2


def test_progress_reports_fractions(problem):
    f = problem["fractions"]
    assert len(f) > 10 and all(0.0 <= v <= 1.0 for v in f) and f[-1] == 1.0
    assert min(f) < 0.2 and max(f[:-1]) > 0.6  # covers the levels of the stage
    assert f == sorted(f)  # never goes backwards


def test_target_registration_error_closed_forms():
    pts = np.array([[10.0, 0, 0], [0, 50.0, 0], [0, 0, -20.0], [30.0, 40.0, 5.0]])
    shift = sitk.TranslationTransform(3, (3.0, 4.0, 0.0))
    np.testing.assert_allclose(target_registration_error(shift, sitk.Transform(), pts), 5.0, atol=1e-12)
    theta = np.deg2rad(10.0)
    rot = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, theta)
    # a rotation by theta about the z axis moves a point at distance r from the axis by 2 r sin(theta / 2)
    r = np.hypot(pts[:, 0], pts[:, 1])
    np.testing.assert_allclose(target_registration_error(rot, sitk.Transform(), pts), 2 * r * np.sin(theta / 2),
                               atol=1e-9)
    with pytest.raises(InputError, match="N x 3"):
        target_registration_error(rot, rot, np.zeros((4, 2)))


@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_transform_file_round_trip(tmp_path, suffix):
    rigid = sitk.Euler3DTransform((5.0, -3.0, 2.0), 0.1, -0.05, 0.2, (4.0, 5.0, -6.0))
    affine = sitk.AffineTransform((1.02, 0.01, 0.0, -0.02, 0.98, 0.03, 0.0, 0.01, 1.01), (1.0, 2.0, 3.0),
                                  (0.0, 10.0, 0.0))
    comp = sitk.CompositeTransform([rigid, affine])
    path = save_transform(comp, tmp_path / f"t{suffix}")
    assert path.exists() and sorted(os.listdir(tmp_path)) == [f"t{suffix}"]  # no temporary left behind
    back = load_transform(path)
    pts = np.random.default_rng(0).uniform(-100, 100, size=(20, 3))
    # the composite applies the affine first, then the rigid
    expect = np.array([rigid.TransformPoint(affine.TransformPoint(tuple(p))) for p in pts])
    got = np.array([back.TransformPoint(tuple(p)) for p in pts])
    np.testing.assert_allclose(got, expect, atol=1e-6)


def test_transform_file_errors(tmp_path):
    t = sitk.Euler3DTransform()
    with pytest.raises(InputError, match="suffix"):
        save_transform(t, tmp_path / "t.nii.gz")
    with pytest.raises(InputError, match="does not exist"):
        save_transform(t, tmp_path / "missing" / "t.tfm")
    with pytest.raises(InputError, match="does not exist"):
        load_transform(tmp_path / "nope.tfm")
    (tmp_path / "bad.tfm").write_text("not a transform\n")
    with pytest.raises(InputError, match="could not be read"):
        load_transform(tmp_path / "bad.tfm")


@pytest.fixture(scope="module")
def small_pair():
    case = generate_case(1, size=(32, 32, 12), spacing=(12.0, 12.0, 12.0))
    return case.ct, case.mr_t1


BAD_CALLS = [
    # (keyword arguments or a callable building (fixed, moving, kwargs), what the message must name)
    (dict(mode="elastic"), "unknown registration mode 'elastic'"),
    (dict(init="centre"), "unknown registration initialisation"),
    (dict(seed=-1), "seed"),
    (dict(seed=True), "seed"),
    (dict(bins=4), "bins"),
    (dict(iterations=-1), "iterations"),
    (dict(iterations=10 ** 6), "iterations"),
    (dict(sampling=0.0), "sampling"),
    (dict(sampling="lots"), "sampling"),
]


@pytest.mark.parametrize("kwargs, message", BAD_CALLS)
def test_bad_arguments_are_refused_with_a_fix(small_pair, kwargs, message):
    ct, mr = small_pair
    with pytest.raises(InputError, match=message) as err:
        register(ct, mr, **kwargs)
    assert err.value.fix  # every refusal says what to do instead


def test_bad_images_are_refused_with_a_fix(small_pair):
    ct, mr = small_pair
    cases = [
        ((ct, mr.with_array(np.full(mr.shape, 7.0, np.float32))), "constant"),
        ((ct, mr.with_array(np.where(np.arange(mr.array.size).reshape(mr.shape) == 5, np.nan, mr.array)
                             .astype(np.float32))), "NaN"),
        ((ct, mr.array), "must be a Volume"),
        ((Volume(ct.array[:2], make_geometry((32, 32, 2), (12.0, 12.0, 12.0))), mr), "3D volume"),
    ]
    for (fixed, moving), message in cases:
        with pytest.raises(InputError, match=message) as err:
            register(fixed, moving)
        assert err.value.fix


def test_images_that_do_not_overlap_give_an_input_error(small_pair):
    """The MRI 5 m away and positions kept as given: ITK finds no sample inside the MRI; the user is told
    to align the images roughly first, not shown an ITK traceback."""
    ct, mr = small_pair
    g = mr.geometry
    far = Volume(mr.array, make_geometry(g.size, g.spacing, tuple(o + 5000.0 for o in g.origin), g.direction))
    with pytest.raises(InputError, match="registration failed") as err:
        register(ct, far, init="none")
    assert "overlap" in err.value.fix


def test_syn_without_antspyx_says_how_to_get_it(small_pair, monkeypatch):
    import MRtoCTSynthesisLib.pipeline.registration as reg

    monkeypatch.setattr(reg, "antspyx_available", lambda: False)
    ct, mr = small_pair
    with pytest.raises(InputError, match="antspyx") as err:
        register(ct, mr, mode="syn")
    assert "bspline" in err.value.fix


def test_progress_can_cancel(small_pair):
    ct, mr = small_pair
    calls = []

    def progress(f, msg):
        calls.append(f)
        raise CancelledError("stop")

    with pytest.raises(CancelledError):
        register(ct, mr, mode="rigid", progress=progress)
    assert len(calls) == 1


def test_thin_volume_registers_without_coarse_pyramid_failure():
    """12 slices at 6 mm: the 4x level would leave 3 slices ("All samples map outside ..."); it is skipped."""
    import SimpleITK as sitk

    from MRtoCTSynthesisLib.data.phantom import generate_case
    from MRtoCTSynthesisLib.io.volume import Volume
    from MRtoCTSynthesisLib.pipeline.registration import register, target_registration_error

    case = generate_case(5, size=(48, 48, 12), spacing=(6.0, 6.0, 6.0))
    shift = sitk.TranslationTransform(3, (6.0, -4.0, 3.0))  # fixed -> moving, mm
    moving_img = case.mr_t1.to_sitk()
    moving_img.SetOrigin(tuple(o + d for o, d in zip(moving_img.GetOrigin(), (6.0, -4.0, 3.0))))
    res = register(case.ct, Volume.from_sitk(moving_img), mode="rigid", seed=0)
    body = np.argwhere(case.mask.array > 0)[::97][:, ::-1].astype(float)  # (i, j, k) -> physical below
    pts = np.array([case.ct.to_sitk().TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in body])
    assert target_registration_error(res.transform, shift, pts).mean() < 2.0
