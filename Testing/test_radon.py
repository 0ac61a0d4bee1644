"""The sparse-matrix Radon operator against independent references: scikit-image's radon/iradon, the
closed-form projection of a disk, dense linear algebra (numpy SVD / lstsq) and autograd's gradcheck."""

import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.operators import (
    RadonOperator,
    clear_operator_cache,
    detector_count,
    get_operator,
    projection_angles,
    simulate_measurements,
    system_matrix_coo,
)
from MRtoCTSynthesisLib.operators import radon as radon_module


def _smooth_phantom(h, w):
    """Three overlapping Gaussian blobs (no sharp edges, so both discretisations agree closely)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for cy, cx, s, a in ((0.45, 0.5, 0.18, 1.0), (0.3, 0.35, 0.08, 0.6), (0.65, 0.62, 0.1, -0.4)):
        img += a * np.exp(-(((yy - cy * h) / (s * h)) ** 2 + ((xx - cx * w) / (s * w)) ** 2))
    return img


def _disk(n, radius, value=1.0, supersample=8):
    """A centred disk (centre = pixel (n//2, n//2)), area-sampled with ``supersample``^2 points per pixel."""
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    c = np.arange(n) - n // 2
    yy = c[:, None, None, None] + off[None, None, :, None]
    xx = c[None, :, None, None] + off[None, None, None, :]
    return value * ((yy ** 2 + xx ** 2) <= radius ** 2).mean(axis=(2, 3))


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("shape, n_p", [((64, 64), 23), ((50, 63), 10), ((48, 48), 60)])
@pytest.mark.parametrize("kind", ["smooth", "shepp_logan"])
def test_forward_matches_scikit_image_radon(shape, n_p, kind):
    """Same angles (180 a / N_p), circle=False, same centre and bins: relative L2 error < 5 %
    (measured ~1 % for Shepp-Logan, < 0.5 % for the smooth phantom: Joseph's interpolation differs from
    scikit-image's rotate-and-sum only at the sub-pixel level)."""
    img = _smooth_phantom(*shape) if kind == "smooth" else resize(shepp_logan_phantom(), shape, anti_aliasing=True)
    op = RadonOperator(shape, n_p, dtype=torch.float64)
    assert op.n_det == detector_count(*shape) == math.ceil(math.sqrt(2) * max(shape))
    ours = op.forward(torch.from_numpy(img)).numpy()  # [N_p, n_det]
    ref = radon(img, theta=projection_angles(n_p), circle=False).T  # scikit-image: [n_det, N_p]
    assert ours.shape == ref.shape == (n_p, op.n_det)
    assert _rel(ours, ref) < 0.05
    if kind == "smooth":
        assert _rel(ours, ref) < 0.01


def test_disk_projection_matches_closed_form():
    """A centred disk of radius r and value v projects to 2 v sqrt(r^2 - s^2) at every angle; averaged
    over a bin of unit width that is F(s + 1/2) - F(s - 1/2), F(u) = v (u sqrt(r^2 - u^2) + r^2 asin(u / r)).
    The area-sampled disk matches the bin average to < 1 % at every angle (measured 0.1 - 0.7 %)."""
    n, r, v = 64, 20.0, 0.7
    op = RadonOperator(n, 12, dtype=torch.float64)
    sino = op.forward(torch.from_numpy(_disk(n, r, v))).numpy()
    s = np.arange(op.n_det) - op.n_det // 2

    def F(u):
        return v * (u * np.sqrt(np.clip(r * r - u * u, 0, None)) + r * r * np.arcsin(np.clip(u / r, -1, 1)))

    bin_average = F(s + 0.5) - F(s - 0.5)
    point = 2 * v * np.sqrt(np.clip(r ** 2 - s ** 2, 0, None))
    for a in range(op.n_projections):
        assert _rel(sino[a], bin_average) < 0.01, (a, op.angles_deg[a])
        assert _rel(sino[a], point) < 0.03, (a, op.angles_deg[a])


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_adjoint_is_the_transpose(dtype, tol):
    op = RadonOperator((40, 33), 17, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 40, 33, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(5, 1, 17, op.n_det, generator=g, dtype=torch.float64).to(dtype)
    lhs = float((op.forward(x).double() * y.double()).sum())
    rhs = float((x.double() * op.adjoint(y).double()).sum())
    assert abs(lhs - rhs) <= tol * max(abs(lhs), abs(rhs))


def test_pinv_reproduces_the_range_and_is_symmetric():
    op = RadonOperator(32, 23, dtype=torch.float64, pinv="tikhonov")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 32, 32, generator=g, dtype=torch.float64)
    ax = op.forward(x)
    # A A+ A = A on random inputs, up to the 1e-6 lambda_max regularisation (measured 8e-4: random images
    # put much energy into the weakest directions; smooth images get ~1e-5)
    assert _rel(op.forward(op.pinv(ax)), ax) < 2e-3
    # A+ A is a symmetric projector onto the row space
    u = torch.randn(1, 32, 32, generator=g, dtype=torch.float64)
    v = torch.randn(1, 32, 32, generator=g, dtype=torch.float64)
    puv = float((op.pinv(op.forward(u)) * v).sum())
    upv = float((u * op.pinv(op.forward(v))).sum())
    assert abs(puv - upv) < 1e-8 * math.sqrt(float((u * u).sum() * (v * v).sum()))
    assert op.method == "cholesky" and op.regularization > 0


@pytest.mark.parametrize("n_p, side", [(5, "rows"), (40, "pixels")])
def test_pinv_is_the_minimum_norm_solution_of_dense_linear_algebra(n_p, side):
    """16 x 16 image; 5 views (115 rays, 12 miss the image: the row Gram A A^T is factored) or 40 views
    (more rays than pixels: the pixel Gram A^T A is). Compared with numpy's SVD and lstsq."""
    n = 16
    op = RadonOperator(n, n_p, dtype=torch.float64, pinv="tikhonov")
    assert op.gram_side == side
    rows, cols, vals = system_matrix_coo(n, n, projection_angles(n_p), op.n_det)
    A = np.zeros((n_p * op.n_det, n * n))
    np.add.at(A, (rows, cols), vals)
    U, sv, Vt = np.linalg.svd(A, full_matrices=True)
    k = len(sv)
    rank = int((sv > 1e-9 * sv[0]).sum())
    null_basis = Vt[rank:]  # orthonormal basis of the null space of A (empty for 40 views)
    lam = op.regularization
    assert lam == pytest.approx(1e-6 * sv[0] ** 2, rel=1e-3)
    rng = np.random.default_rng(0)
    for y in (A @ rng.normal(size=n * n), rng.normal(size=A.shape[0])):  # consistent data, then any data
        ours = op.pinv(torch.from_numpy(y.reshape(n_p, op.n_det))).numpy().ravel()
        # exactly the Tikhonov-regularised pseudo-inverse sum_i s_i / (s_i^2 + lambda) (u_i . y) v_i
        tikhonov = Vt[:k].T @ (sv / (sv ** 2 + lam) * (U[:, :k].T @ y))
        assert _rel(ours, tikhonov) < 1e-6
        # lstsq's minimum-norm solution, in the directions the regularisation leaves alone (s_i^2 > 1e3 lambda)
        ref = np.linalg.lstsq(A, y, rcond=None)[0]
        strong = Vt[:k][sv ** 2 > 1e3 * lam]
        assert _rel(strong @ ours, strong @ ref) < 1e-3
        assert np.linalg.norm(ours) <= np.linalg.norm(ref) * (1 + 1e-9)
        if len(null_basis):  # no null-space component at all
            assert np.linalg.norm(null_basis @ ours) < 1e-9 * np.linalg.norm(ours)
            assert np.linalg.norm(null_basis @ ref) < 1e-9 * np.linalg.norm(ref)


def test_pinv_noise_gain_is_the_rms_of_the_pseudo_inverse():
    """sqrt(trace(A+ A+^T) / (H W)) from the SVD (Tikhonov filter s / (s^2 + lambda)) vs the 64-probe estimate."""
    n, n_p = 16, 5
    op = RadonOperator(n, n_p, dtype=torch.float64, pinv="tikhonov")
    rows, cols, vals = system_matrix_coo(n, n, projection_angles(n_p), op.n_det)
    A = np.zeros((n_p * op.n_det, n * n))
    np.add.at(A, (rows, cols), vals)
    sv = np.linalg.svd(A, compute_uv=False)
    exact = math.sqrt(np.sum((sv / (sv ** 2 + op.regularization)) ** 2) / (n * n))
    assert op.pinv_noise_gain() == pytest.approx(exact, rel=0.1)
    assert op.pinv_noise_gain() == op.pinv_noise_gain(64)  # cached, deterministic


def _dense_A(n, n_p, n_det):
    rows, cols, vals = system_matrix_coo(n, n, projection_angles(n_p), n_det)
    A = np.zeros((n_p * n_det, n * n))
    np.add.at(A, (rows, cols), vals)
    return A


@pytest.mark.parametrize("n, n_p, side", [(16, 5, "rows"), (12, 23, "pixels")])
def test_exact_pinv_matches_numpy_pinv(n, n_p, side):
    """The SVD path against numpy.linalg.pinv with the same relative cut-off, on both Gram sides."""
    op = RadonOperator(n, n_p, dtype=torch.float64)
    assert (op.method, op.gram_side) == ("svd", side)
    A = _dense_A(n, n_p, op.n_det)
    ref = np.linalg.pinv(A, rcond=radon_module.SVD_RCOND)
    sv = np.linalg.svd(A, compute_uv=False)
    assert op.rank == int((sv > radon_module.SVD_RCOND * sv[0]).sum())
    np.testing.assert_allclose(op.singular_values, sv[: op.rank], rtol=1e-8, atol=1e-10 * sv[0])
    rng = np.random.default_rng(3)
    y = rng.normal(size=(3, A.shape[0]))
    ours = op.pinv(torch.from_numpy(y.reshape(3, n_p, op.n_det))).numpy().reshape(3, -1)
    np.testing.assert_allclose(ours, y @ ref.T, rtol=0, atol=1e-8 * np.abs(y @ ref.T).max())
    # Penrose conditions: A A+ A = A, A+ A A+ = A+ (through the operator, on a basis-free random test)
    x = rng.normal(size=(3, n * n))
    p = op.pinv(op.forward(torch.from_numpy(x.reshape(3, n, n)))).numpy().reshape(3, -1)
    np.testing.assert_allclose(A @ p.T, A @ x.T, atol=1e-9 * np.abs(A @ x.T).max())
    assert op.regularization == 0.0


def test_exact_pinv_is_idempotent_on_the_demo_grid():
    """64 x 64 with 23 views (the demo geometry): A+ A is a projector to float precision (the Tikhonov inverse
    it replaces was off by 4 %)."""
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = RadonOperator(64, 23, dtype=torch.float64)
    p = exact.pinv(exact.forward(x))
    assert _rel(exact.pinv(exact.forward(p)), p) < 1e-7  # measured 1.8e-9
    tik = RadonOperator(64, 23, dtype=torch.float64, pinv="tikhonov")
    pt = tik.pinv(tik.forward(x))
    assert _rel(tik.pinv(tik.forward(pt)), pt) > 1e-2
    f32 = RadonOperator(64, 23, dtype=torch.float32)
    p32 = f32.pinv(f32.forward(x.float()))
    assert _rel(f32.pinv(f32.forward(p32)), p32) < 1e-3  # float32 sinograms: round-off times 1 / s_min


def test_tikhonov_inverse_and_noise_gain_match_the_closed_form():
    n, n_p = 16, 7
    op = RadonOperator(n, n_p, dtype=torch.float64)
    A = _dense_A(n, n_p, op.n_det)
    sv = np.linalg.svd(A, compute_uv=False)
    rng = np.random.default_rng(4)
    y = rng.normal(size=A.shape[0])
    for lam in (0.0, 0.5, 20.0):
        ref = A.T @ np.linalg.solve(A @ A.T + lam * np.eye(A.shape[0]), y) if lam > 0 else \
            np.linalg.pinv(A, rcond=radon_module.SVD_RCOND) @ y
        ours = op.pinv_tikhonov(torch.from_numpy(y.reshape(n_p, op.n_det)), lam).numpy().ravel()
        assert _rel(ours, ref) < 1e-8
        kept = sv[sv > radon_module.SVD_RCOND * sv[0]]
        closed = math.sqrt(np.sum(kept ** 2 / (kept ** 2 + lam) ** 2) / (n * n))
        assert op.tikhonov_noise_gain(lam) == pytest.approx(closed, rel=1e-8)
        # Monte-Carlo check of the closed form: RMS of A+_lam n over 4000 white-noise draws (2 % accuracy)
        noise = torch.from_numpy(rng.normal(size=(4000, n_p, op.n_det)))
        mc = float(op.pinv_tikhonov(noise, lam).pow(2).mean().sqrt())
        assert mc == pytest.approx(closed, rel=0.03)
    assert op.tikhonov_noise_gain(20.0) < op.tikhonov_noise_gain(0.5) < op.tikhonov_noise_gain(0.0)
    assert op.pinv_noise_gain() == op.tikhonov_noise_gain(0.0)


def test_wiener_inverse_is_exact_without_noise_and_keeps_only_what_beats_the_noise():
    n, n_p = 32, 23
    op = RadonOperator(n, n_p, dtype=torch.float64)
    x = torch.from_numpy(_smooth_phantom(n, n))[None, None]
    y = op.forward(x)
    exact, noise0 = op.pinv_wiener(y, 0.0)
    torch.testing.assert_close(exact, op.pinv(y))
    assert float(noise0) == 0.0
    g = torch.Generator().manual_seed(7)
    n_draw = torch.randn(y.shape, generator=g, dtype=torch.float64)
    sigma = 0.3
    est, noise = op.pinv_wiener(y + sigma * n_draw, sigma)
    # the filtered estimate is far closer to the range-space truth than the exact inverse of the noisy data
    truth = op.pinv(y)
    assert _rel(est, truth) < 0.5 * _rel(op.pinv(y + sigma * n_draw), truth)
    # reported noise: sigma * sqrt(sum g^2 / s^2 / (H W)), checked against the gains and singular values
    gains = op.wiener_gains(y + sigma * n_draw, sigma)[0].numpy()
    sv = op.singular_values
    assert float(noise) == pytest.approx(sigma * math.sqrt(np.sum((gains / sv) ** 2) / (n * n)), rel=1e-10)
    assert set(np.unique(gains)) - {0.0} and gains.min() >= 0 and gains.max() < 1
    # pure noise: a band passes the 3-standard-error gate rarely (chi-square tail, < 1 % of bands), so over
    # 300 draws the estimate keeps a few per cent of the exact inverse's noise energy at most
    pure = sigma * torch.randn(300, n_p, op.n_det, generator=g, dtype=torch.float64)
    assert float((op.wiener_gains(pure, sigma) > 0).double().mean()) < 0.02
    est_noise, _ = op.pinv_wiener(pure, sigma)
    assert float(est_noise.pow(2).sum()) < 0.05 * float(op.pinv(pure).pow(2).sum())


def test_conjugate_gradient_fallback_matches_cholesky():
    """Forcing the large-geometry path: CG stops once A A+ y matches y to CG_RTOL (1e-4), well before
    CG_MAX_ITER; its image then differs from the exactly factored one by < 2 % (in the weakest directions)."""
    x = torch.from_numpy(_smooth_phantom(16, 16))[None]
    dense = RadonOperator(16, 7, dtype=torch.float64, pinv="tikhonov")
    cg = RadonOperator(16, 7, dtype=torch.float64, dense_max_rows=0, pinv="tikhonov")
    assert (dense.method, cg.method) == ("cholesky", "cg")
    y = dense.forward(x)
    p_cg, p_dense = cg.pinv(y), dense.pinv(y)
    assert _rel(p_cg, p_dense) < 2e-2
    assert _rel(cg.forward(p_cg), y) <= radon_module.CG_RTOL * (1 + 1e-6)
    assert _rel(dense.forward(p_dense), y) < 1e-4
    assert cg.cg_iterations and max(cg.cg_iterations) < radon_module.CG_MAX_ITER


def test_fbp_of_a_disk_recovers_its_value():
    """Analytic sinogram of a disk (value 1.3, radius 18): FBP is ~1.3 inside, ~0 outside, and agrees with
    scikit-image's iradon (ramp filter) on the same sinogram."""
    n, r, v, n_p = 64, 18.0, 1.3, 180
    op = RadonOperator(n, n_p, dtype=torch.float64)
    s = np.arange(op.n_det) - op.n_det // 2
    sino = np.tile(2 * v * np.sqrt(np.clip(r ** 2 - s ** 2, 0, None)), (n_p, 1))
    rec = op.fbp(torch.from_numpy(sino)).numpy()
    c = np.arange(n) - n // 2
    rad = np.hypot(c[:, None], c[None, :])
    inside, outside = rec[rad < 0.8 * r], rec[(rad > 1.2 * r) & (rad < 28)]
    assert abs(inside.mean() - v) < 0.01 * v and inside.std() < 0.02 * v
    assert abs(outside.mean()) < 0.01 * v
    ref = iradon(sino.T, theta=op.angles_deg, circle=False, filter_name="ramp", output_size=n)
    assert _rel(rec, ref) < 0.02


def test_batched_equals_per_item():
    op = RadonOperator((20, 24), 7)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1, 20, 24, generator=g)
    y = torch.randn(3, 1, 7, op.n_det, generator=g)
    for fn, batch in ((op.forward, x), (op.adjoint, y), (op.pinv, y), (op.fbp, y)):
        together = fn(batch)
        single = torch.cat([fn(batch[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(together, single, rtol=1e-5, atol=1e-5)
    assert op.forward(x[0, 0]).shape == (7, op.n_det)  # unbatched [H, W] works too


def test_gradients_flow_through_forward_adjoint_and_pinv():
    op = RadonOperator(8, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 1, 3, op.n_det, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.forward, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))
    assert torch.autograd.gradcheck(op.pinv, (y,))
    for kind in ("svd", "tikhonov"):
        pixel_side = RadonOperator(6, 9, dtype=torch.float64, pinv=kind)  # more rays than pixels: the A^T A side
        assert pixel_side.gram_side == "pixels" and pixel_side.method == ("svd" if kind == "svd" else "cholesky")
        assert torch.autograd.gradcheck(pixel_side.pinv, (torch.randn(1, 9, pixel_side.n_det, generator=g,
                                                                       dtype=torch.float64, requires_grad=True),))
    tik = RadonOperator(8, 3, dtype=torch.float64, pinv="tikhonov")
    assert torch.autograd.gradcheck(tik.pinv, (y,))


def test_operator_cache_and_measurement_simulation():
    clear_operator_cache()
    a = get_operator(16, 5)
    assert get_operator((16, 16), 5, device="cpu") is a
    assert get_operator(16, 6) is not a and get_operator(16, 5, dtype=torch.float64) is not a
    for k in range(radon_module.CACHE_SIZE + 1):  # least recently used entries are dropped
        get_operator(8, k + 1)
    assert get_operator(16, 5) is not a
    op = get_operator(32, 11)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    clean = simulate_measurements(x, op, 0.0)
    torch.testing.assert_close(clean, op.forward(x))
    n1 = simulate_measurements(x, op, 0.25, torch.Generator().manual_seed(9)) - clean
    n2 = simulate_measurements(x, op, 0.25, torch.Generator().manual_seed(9)) - clean
    torch.testing.assert_close(n1, n2)
    assert float(n1.std()) == pytest.approx(0.25, rel=0.05) and abs(float(n1.mean())) < 0.02
    for bad in (-0.1, float("nan")):
        with pytest.raises(InputError):
            simulate_measurements(x, op, bad)


def test_svd_path_is_refused_where_it_does_not_fit():
    with pytest.raises(InputError):
        RadonOperator(16, 5, pinv="svd", svd_max=10)
    assert RadonOperator(16, 5, svd_max=10).method == "cholesky"
    with pytest.raises(InputError):
        RadonOperator(16, 5, pinv="tikhonov").pinv_wiener(torch.zeros(5, detector_count(16, 16)), 0.1)
    with pytest.raises(InputError):
        RadonOperator(16, 5, pinv="exact")


def test_bad_arguments():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError):
            RadonOperator(16, bad)
    with pytest.raises(InputError):
        RadonOperator((0, 16), 4)
    op = RadonOperator(16, 4)
    with pytest.raises(ValueError):
        op.forward(torch.zeros(1, 1, 15, 16))
    with pytest.raises(ValueError):
        op.pinv(torch.zeros(1, 1, 5, op.n_det))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU path is tested above)")
def test_cuda_matches_cpu():
    cpu = RadonOperator(32, 13)
    gpu = RadonOperator(32, 13, device="cuda")
    x = torch.randn(4, 1, 32, 32)
    torch.testing.assert_close(gpu.forward(x.cuda()).cpu(), cpu.forward(x), rtol=1e-4, atol=1e-4)
    y = cpu.forward(x)
    torch.testing.assert_close(gpu.pinv(y.cuda()).cpu(), cpu.pinv(y), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(gpu.fbp(y.cuda()).cpu(), cpu.fbp(y), rtol=1e-3, atol=1e-3)


def test_any_angles_and_detector_spacing():
    """Non-uniform angles against scikit-image's radon at the same angles; a detector spacing d against the
    closed-form disk projection 2 v sqrt(r^2 - s^2) sampled at s = (k - n_det // 2) d."""
    img = _smooth_phantom(48, 48)
    angles = [0.0, 11.0, 37.5, 90.0, 101.0, 163.2]
    op = RadonOperator(48, len(angles), dtype=torch.float64, angles_deg=angles)
    ref = radon(img, theta=angles, circle=False).T
    assert _rel(op.forward(torch.from_numpy(img)).numpy(), ref) < 0.01
    n, r, v, d = 64, 20.0, 0.7, 1.5
    op = RadonOperator(n, 5, dtype=torch.float64, det_spacing=d, n_detectors=61)
    sino = op.forward(torch.from_numpy(_disk(n, r, v))).numpy()
    s = (np.arange(61) - 30) * d
    point = 2 * v * np.sqrt(np.clip(r ** 2 - s ** 2, 0, None))
    for a in range(5):
        assert _rel(sino[a], point) < 0.03
    with pytest.raises(InputError):
        RadonOperator(16, 3, angles_deg=[0.0, 10.0])
    with pytest.raises(InputError):
        RadonOperator(16, 3, det_spacing=0.0)


def test_noise_estimate_from_the_consistency_conditions():
    """sigma from (I - U U^T) y: within 4 standard errors (1 / sqrt(2 dof)) of the true sigma, ~0 without noise."""
    op = RadonOperator(32, 23, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    x = torch.from_numpy(np.stack([_smooth_phantom(32, 32)] * 6))[:, None] * torch.rand(6, 1, 1, 1, generator=g)
    y = op.forward(x)
    est0, dof = op.estimate_noise_sigma(y)
    # the directions outside the range, less the weak ones below the inverse's cut-off (they still carry signal)
    assert dof == 6 * (op.n_kept_rows - op.rank - op._u_weak.shape[1]) and dof > 100
    assert est0 < 1e-6
    for sigma in (0.01, 0.3, 2.0):
        est, _ = op.estimate_noise_sigma(y + sigma * torch.randn(y.shape, generator=g, dtype=torch.float64))
        assert abs(est / sigma - 1) < 4 / math.sqrt(2 * dof), (sigma, est)
