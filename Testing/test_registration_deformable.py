"""Deformable modes (for paired training data): a known smooth warp is undone better than by the rigid mode,
and the Jacobian determinant range is reported and positive.

The warp is applied to the phantom's T1 and registered to the T1 itself (one contrast): on the phantom's
CT vs T1, mutual information constrains a local deformation too weakly for the B-spline to beat the
rigid result with the default sample count (see ``pipeline/registration/deformable.py``).
"""

import numpy as np
import pytest
import SimpleITK as sitk

from MRtoCTSynthesisLib.data.phantom import generate_case
from MRtoCTSynthesisLib.io.volume import Volume
from MRtoCTSynthesisLib.pipeline.registration import antspyx_available, register


def _smooth_warp(image: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A smooth displacement (fixed -> source points): a 12 mm Gaussian bump (x and y) plus a 2 mm shift."""
    arr_shape = sitk.GetArrayViewFromImage(image).shape
    k, j, i = np.meshgrid(*[np.arange(n) for n in arr_shape], indexing="ij")
    pts = np.stack([i, j, k], -1).reshape(-1, 3).astype(float)
    m = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    phys = pts @ m.T + np.asarray(image.GetOrigin())
    c = phys.mean(0)
    r2 = ((phys - c) ** 2).sum(1)
    bump = np.exp(-r2 / (2 * 45.0 ** 2))
    disp = np.zeros_like(phys)
    disp[:, 0] = 10.0 * bump + 2.0
    disp[:, 1] = -7.0 * bump
    field = sitk.GetImageFromArray(disp.reshape(*arr_shape, 3), isVector=True)
    field.CopyInformation(image)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


@pytest.fixture(scope="module")
def warped():
    case = generate_case(6, size=(64, 64, 24), spacing=(5.0, 5.0, 6.0))
    ref = case.mr_t1.to_sitk()
    warp = _smooth_warp(ref)
    # moving(x) = T1(W(x)): registering it to the T1 must find T with W(T(x)) = x
    moving = sitk.Resample(ref, ref, warp, sitk.sitkLinear, 0.0)
    body = np.argwhere(case.mask.array > 0)
    pick = body[np.random.default_rng(1).choice(len(body), 300, replace=False)]
    pts = np.array([ref.TransformContinuousIndexToPhysicalPoint([float(v) for v in p[::-1]]) for p in pick])
    return dict(ct=case.mr_t1, moving=Volume.from_sitk(moving), warp=warp, points=pts)


def _residual(transform, warp, pts):
    back = np.array([warp.TransformPoint(transform.TransformPoint(tuple(p))) for p in pts])
    return np.linalg.norm(back - pts, axis=1)


@pytest.mark.slow
def test_bspline_undoes_a_smooth_warp_and_reports_a_positive_jacobian(warped):
    rigid = register(warped["ct"], warped["moving"], mode="rigid", iterations=40)
    bsp = register(warped["ct"], warped["moving"], mode="bspline", iterations=25)
    assert [s["name"] for s in bsp.stages] == ["rigid", "bspline"]
    assert isinstance(bsp.transform, sitk.CompositeTransform) and bsp.transform.GetNumberOfTransforms() == 2
    err_rigid = _residual(rigid.transform, warped["warp"], warped["points"])
    err_bsp = _residual(bsp.transform, warped["warp"], warped["points"])
    assert err_rigid.mean() > 1.0  # a rigid transform cannot follow the bump
    assert err_bsp.mean() < 0.6 * err_rigid.mean(), (err_bsp.mean(), err_rigid.mean())
    q = bsp.quality
    assert 0.0 < q["jacobian_min"] < 1.0 < q["jacobian_max"] < 3.0  # it deformed, and folded nowhere
    assert q["folding_fraction"] == 0.0
    assert "jacobian_min" not in rigid.quality
    assert q["metric_final"] < rigid.quality["metric_final"]


@pytest.mark.skipif(not antspyx_available(), reason="mode 'syn' needs antspyx (the optional `bench` extra)")
def test_syn_reports_a_positive_jacobian(warped):
    res = register(warped["ct"], warped["moving"], mode="syn")
    assert [s["name"] for s in res.stages] == ["rigid", "syn"]
    assert res.quality["jacobian_min"] > 0
    err = _residual(res.transform, warped["warp"], warped["points"])
    assert err.mean() < 1.5
