"""Registration quality numbers and the honest stop: a frozen optimiser is reported, not passed off as success."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MRtoCTSynthesisLib.data.phantom import generate_case
from MRtoCTSynthesisLib.io.volume import Volume, make_geometry
from MRtoCTSynthesisLib.pipeline.registration import RegistrationWarning, quality, register


@pytest.fixture(scope="module")
def pair():
    case = generate_case(2, size=(48, 48, 16), spacing=(8.0, 8.0, 9.0))
    return case.ct, case.mr_t1


def test_zero_iterations_is_reported_not_passed_off_as_success(pair):
    ct, mr = pair
    with pytest.warns(RegistrationWarning, match="no iterations"):
        res = register(ct, mr, iterations=0)
    assert not res.converged
    assert any("no iterations" in w for w in res.warnings)
    # the transform is the starting alignment: the metric is unchanged, and flagged so
    assert res.quality["metric_final"] == pytest.approx(res.quality["metric_start"])
    assert res.quality["metric_unchanged"] is True


def test_optimiser_that_cannot_move_is_reported_with_the_numbers(pair):
    """The MRI's only structure lies outside the CT's field of view and positions are kept as given: every
    metric sample sees a flat MRI, the gradient is zero and the transform cannot move. That must come back
    as a warning naming the level and the metric values, not as a converged result."""
    ct, _ = pair
    g = ct.geometry
    size = (3 * g.size[0], 3 * g.size[1], 3 * g.size[2])
    origin = tuple(o - s * n for o, s, n in zip(g.origin, g.spacing, g.size))
    arr = np.zeros(size[::-1], np.float32)
    arr[:6, :6, :6] = 100.0  # a bright block in a far corner, outside the CT's box
    flat = Volume(arr, make_geometry(size, g.spacing, origin, g.direction))
    with pytest.warns(RegistrationWarning):
        res = register(ct, flat, init="none", iterations=20)
    assert not res.converged
    still = [w for w in res.warnings if "did not move" in w]
    assert still, res.warnings
    assert "metric" in still[0] and "level" in still[0]
    assert all(lv["moved_mm"] < 0.01 for lv in res.stages[0]["levels"])


def test_edge_scores_against_scipy_and_closed_forms():
    case = generate_case(4, size=(40, 40, 20), spacing=(5.0, 5.0, 6.0))
    img = case.mr_t2.to_sitk()
    arr = case.mr_t2.array.astype(np.float64)
    sigma = 6.0
    g = quality.gradient(img, sigma)
    region = np.ones(arr.shape, bool)
    region[:2], region[-2:] = False, False  # away from the boundary handling of either filter
    # identical images: both scores are 1; a contrast-inverted copy keeps both (magnitudes, |cos|)
    same = quality.edge_scores(g, img, region, sigma)
    assert same["gradient_correlation"] == pytest.approx(1.0) and same["edge_alignment"] == pytest.approx(1.0)
    inv = sitk.GetImageFromArray((arr.max() - arr).astype(np.float32))
    inv.CopyInformation(img)
    inverted = quality.edge_scores(g, inv, region, sigma)
    assert inverted["gradient_correlation"] == pytest.approx(1.0, abs=1e-4)
    assert inverted["edge_alignment"] == pytest.approx(1.0, abs=1e-4)
    # independent reference: scipy's Gaussian gradient magnitude (sigma in voxels per axis) on the same
    # pair (the image vs itself shifted by 2 voxels along x) gives about the same correlation
    shifted_arr = np.roll(arr, 2, axis=2)
    shifted = sitk.GetImageFromArray(shifted_arr.astype(np.float32))
    shifted.CopyInformation(img)
    ours = quality.edge_scores(g, shifted, region, sigma)["gradient_correlation"]
    vox = [sigma / s for s in img.GetSpacing()[::-1]]
    ma = ndimage.gaussian_gradient_magnitude(arr, vox)[region]
    mb = ndimage.gaussian_gradient_magnitude(shifted_arr, vox)[region]
    ref = np.corrcoef(ma, mb)[0, 1]
    assert ours == pytest.approx(ref, abs=0.05)
    assert ours < 0.95  # and lower than for the aligned pair


@pytest.mark.parametrize("direction_deg", [0.0, 7.0])
def test_jacobian_range_closed_forms(direction_deg):
    a = np.deg2rad(direction_deg)
    d = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ref = sitk.Image([20, 24, 12], sitk.sitkFloat32)
    ref.SetSpacing((2.0, 2.5, 4.0))
    ref.SetDirection(tuple(d.ravel()))
    matrix = np.array([[1.1, 0.05, 0.0], [0.0, 0.9, 0.1], [0.02, 0.0, 1.2]])
    affine = sitk.AffineTransform(tuple(matrix.ravel()), (3.0, -2.0, 1.0), (10.0, 5.0, 0.0))
    jmin, jmax, fold = quality.jacobian_range(affine, ref)
    assert jmin == pytest.approx(np.linalg.det(matrix), rel=1e-6)
    assert jmax == pytest.approx(np.linalg.det(matrix), rel=1e-6) and fold == 0.0
    rigid = sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3, (5.0, 0.0, 2.0))
    assert quality.jacobian_range(rigid, ref)[:2] == pytest.approx((1.0, 1.0), abs=1e-9)
    mirror = sitk.AffineTransform((-1.0, 0, 0, 0, 1, 0, 0, 0, 1), (0.0, 0.0, 0.0))
    jmin, _, fold = quality.jacobian_range(mirror, ref)
    assert jmin == pytest.approx(-1.0) and fold == 1.0


def test_quality_grid_bounds_the_cost():
    big = sitk.Image([512, 512, 200], sitk.sitkUInt8)
    big.SetSpacing((0.5, 0.5, 1.0))
    small = quality.quality_grid(big)
    assert np.prod(small.GetSize()) <= quality.MAX_QUALITY_VOXELS
    assert max(small.GetSpacing()) / min(small.GetSpacing()) <= 2.0  # the finest axes were binned first
