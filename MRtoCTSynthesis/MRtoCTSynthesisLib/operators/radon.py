"""A sparse-matrix 2D parallel-beam Radon operator (the ``A`` of DDMM-Synth Eqs. 2-5).

Geometry (the same conventions as scikit-image's ``radon(image, theta, circle=False)``, so sinograms are
interchangeable with it):

* the image is ``H x W`` pixels of unit size; the rotation centre is the pixel ``(H // 2, W // 2)``;
  a pixel in row ``i`` and column ``j`` sits at ``X = j - W // 2``, ``Y = i - H // 2``;
* ``N_p`` projection angles ``theta_a = 180 a / N_p`` degrees, ``a = 0 .. N_p - 1`` (uniform over
  ``[0, 180)``, as in the DDMM-Synth experiments), or any list of angles in degrees (``angles_deg``);
* ``n_det`` detector bins of pixel width (default ``ceil(sqrt(2) max(H, W))``, which covers the image
  diagonal); bin ``k`` integrates along the line ``X cos(theta) - Y sin(theta) = k - n_det // 2``; with
  ``det_spacing = d`` (bins ``d`` pixels apart, a measured scanner's geometry) along
  ``X cos(theta) - Y sin(theta) = (k - n_det // 2) d``;
* a sinogram is laid out ``[..., N_p, n_det]`` (angle-major; scikit-image returns the transpose).

Discretisation: Joseph's method. A ray that runs mostly along the image rows' normal (``|cos| >= |sin|``)
is sampled once per pixel row, where it is linearly interpolated between the two nearest columns, with
weight ``1 / |cos theta|`` (the ray length per row); otherwise it is sampled once per column with weight
``1 / |sin theta|``. Pixels outside the image count as zero. Sinogram values are therefore line integrals
in *image units x pixel lengths*: a ray crossing ``L`` pixels of a constant image ``v`` measures about
``v L``.

The matrix ``A`` (``N_p n_det`` rows, ``H W`` columns, about ``2 H W |cos|`` non-zeros per angle) is built
vectorised with numpy (one loop over angles), stored as a torch CSR tensor together with its transpose,
and applied with ``torch.sparse.mm`` on CPU or CUDA. Gradients flow through :meth:`RadonOperator.forward`,
:meth:`~RadonOperator.adjoint` and :meth:`~RadonOperator.pinv` (each backward pass is the adjoint map).

Pseudo-inverse, exact (``pinv="svd"``, the default wherever it fits): DDMM-Synth Eq. 3 assumes ``A+`` with
``A A+ A = A``, i.e. ``A+ A`` an orthogonal projector onto the row space. For geometries whose smaller
Gram matrix (``A A^T`` over the rays that hit the image, or ``A^T A``) has at most ``svd_max`` rows
(:data:`SVD_MAX` = 4096 on CPU -- every view count on the 64 x 64 demo grid --, :data:`SVD_MAX_CUDA` on
CUDA), and whose dense ``V`` (pixels x that size) has at most :data:`SVD_MAX_ENTRIES` entries (256 MB),
that Gram matrix is formed densely in float64 and diagonalised once, ``G = Q diag(s^2) Q^T``,
giving the thin SVD ``A = U diag(s) V^T`` (``U = Q``, ``V = A^T U / s`` for the row Gram; ``V = Q``,
``U = A V / s`` for the pixel Gram). Singular values below ``SVD_RCOND s_max`` (1e-5) are treated as
zero: the eigen-decomposition of ``G`` resolves ``s`` only down to about ``sqrt(eps) s_max`` (1.5e-8),
float32 sinograms carry round-off of about 1e-7 of a ray, and 1e-5 keeps the largest gain ``1 / s`` of
the exact inverse below 1e5 / s_max (on the 64 x 64 grid with 23 views 36 of 1887 singular values are
exact zeros -- the views' consistency conditions -- and 10 more lie between 1e-10 and 1e-5 s_max).
Then ``A+ = V diag(1 / s) U^T`` and ``A+ A = V V^T`` is idempotent and symmetric to float64 precision.
The singular values (:attr:`RadonOperator.singular_values`) also give the noise-aware inverses exactly:

* :meth:`RadonOperator.pinv_tikhonov`: ``A+_lambda = A^T (A A^T + lambda I)^-1 = V diag(s / (s^2 + lambda)) U^T``.
  Derivation: for ``y = A x + n`` with a Gaussian prior ``x ~ N(0, tau^2 I)`` (the image's spread about
  the current estimate) and white bin noise ``n ~ N(0, sigma^2 I)``, the posterior mean of ``x`` is
  ``tau^2 A^T (tau^2 A A^T + sigma^2 I)^-1 y``, i.e. Tikhonov with ``lambda = sigma^2 / tau^2``. Per
  singular direction it keeps the fraction ``s^2 / (s^2 + lambda)`` (the Wiener gain) of ``u . y / s``.
  Its image-domain noise for unit white bin noise has per-pixel RMS
  ``sqrt(sum_k s_k^2 / (s_k^2 + lambda)^2 / (H W))`` (:meth:`RadonOperator.tikhonov_noise_gain`), which
  falls from ``sqrt(sum 1 / s^2 / (H W))`` at ``lambda = 0`` to 0 as ``lambda`` grows.
* :meth:`RadonOperator.pinv_wiener`: the same filter with the prior's scale estimated from the data, one
  ``tau_k`` per band of similar singular values (empirical Bayes). In the ``U`` basis the data are
  ``c_k = u_k . y = s_k (v_k . x) + n_k`` with ``E[c_k^2] = s_k^2 tau_k^2 + sigma^2``, so over a band of
  ``m`` consecutive singular values (:data:`WIENER_BAND` = 64) the signal power is
  ``S_b = mean_band(c_k^2) - sigma^2`` and the gain is ``S_b / (S_b + sigma^2) = 1 - sigma^2 /
  mean_band(c_k^2)`` -- Tikhonov with a per-band ``lambda_k = sigma^2 s_k^2 / S_b``. A band whose power
  does not exceed ``sigma^2`` by :data:`WIENER_GATE` = 3 standard errors of the estimate under pure noise
  (``3 sqrt(2 / m) sigma^2``; a pure-noise band passes with probability below 1 %) gets gain 0: what the
  data cannot tell apart from noise is left to the prior. ``sigma = 0`` gives gain 1 in every
  band, the exact ``A+``.

Larger geometries (or ``pinv="tikhonov"``) use the regularised ``A+ = A^T (G + lambda I)^-1`` with ``lambda = reg *
lambda_max(G)`` (``reg = 1e-6``), which is *not* an exact pseudo-inverse (``A+ A`` is idempotent only up
to the regularisation: 4.6 % on the 64 x 64 grid with 23 views) and has no noise-aware variant.
The same matrix is ``(A^T A + lambda I)^-1 A^T``, so the smaller of the two Gram matrices is used: the
row Gram ``A A^T`` (``N_p n_det`` rows, e.g. 7 507 for 23 views at 256 x 256) for sparse views, the
pixel Gram ``A^T A`` (``H W``) for many views on a small grid. When that size is at most
``dense_max_rows`` (:data:`DENSE_MAX_ROWS` = 10 000 on CPU, :data:`DENSE_MAX_ROWS_CUDA` = 24 000 on CUDA:
800 MB / 4.6 GB in float64) it is formed densely and Cholesky-factored once, in float64 (float32 on
``mps``), and its inverse ``(G + lambda I)^-1`` is kept, so that each application is one dense matrix
product (a few times faster than two triangular solves for a batch). Larger geometries (both sizes above the
threshold, e.g. 60 views at 256 x 256 on CPU) use Jacobi-preconditioned conjugate gradients on
``A A^T + lambda I``, matrix-free, until ``||y - A A^T z|| <= CG_RTOL ||y||`` (1e-4) or
:data:`CG_MAX_ITER` (1000) iterations. That is a last resort: with ``lambda = 1e-6 lambda_max`` the system
is badly conditioned and a call takes hundreds of iterations (see ``benchmarks/README.md``). Either way the result
lies in the row space of
``A`` (orthogonal to the null space: the minimum-norm solution) and ``A A+ A = A`` up to the
regularisation.

:func:`get_operator` caches operators (and so their factorisations) per geometry, device and dtype.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import InputError

__all__ = [
    "RadonOperator",
    "get_operator",
    "clear_operator_cache",
    "simulate_measurements",
    "projection_angles",
    "detector_count",
    "system_matrix_coo",
    "DENSE_MAX_ROWS",
    "DENSE_MAX_ROWS_CUDA",
    "DEFAULT_REG",
    "SVD_MAX",
    "SVD_MAX_CUDA",
    "SVD_MAX_ENTRIES",
    "SVD_RCOND",
    "WIENER_BAND",
    "WIENER_GATE",
    "PINV_KINDS",
]

#: the largest Gram matrix (rows or pixels, whichever is smaller) formed densely and Cholesky-factored
#: on CPU; beyond it the pseudo-inverse uses conjugate gradients (a 10 000-row float64 factor is 800 MB)
DENSE_MAX_ROWS = 10_000
#: the same on CUDA devices (a 24 000-row float64 factor is 4.6 GB, a fraction of a second on a datacenter GPU)
DENSE_MAX_ROWS_CUDA = 24_000
#: Tikhonov regularisation of the Gram matrix, relative to its largest eigenvalue
DEFAULT_REG = 1e-6
#: the largest Gram matrix diagonalised for the exact (SVD) pseudo-inverse on CPU (4096: the 64 x 64 grid with any
#: view count, about 25 s once per geometry on one core) and on CUDA
SVD_MAX = 4096
SVD_MAX_CUDA = 16_384
#: ... and the most entries of the dense float64 V (pixels x Gram size; U is at most as large): 256 MB on CPU
#: (64 x 64 with 60 views needs 17 M), 1 GB on CUDA; e.g. 256 x 256 with 10 views (238 M) stays on Cholesky
SVD_MAX_ENTRIES = 32 * 2 ** 20
SVD_MAX_ENTRIES_CUDA = 128 * 2 ** 20
#: singular values below this fraction of the largest are zero for the exact pseudo-inverse
SVD_RCOND = 1e-5
#: singular values between this fraction of the largest and SVD_RCOND are left out of the noise estimate
WEAK_RCOND = 1e-9
#: the same for the pixel-side Gram (A^T A), whose small eigenvectors give U = A V / s less accurately
WEAK_RCOND_PIXELS = 1e-7
#: singular values per band of the empirical Wiener filter (:meth:`RadonOperator.pinv_wiener`)
WIENER_BAND = 64
#: a Wiener band is used only when its power exceeds sigma^2 by this many standard errors of pure noise
WIENER_GATE = 3.0
#: how the pseudo-inverse is computed: "auto" (svd where it fits, else tikhonov), "svd", "tikhonov"
PINV_KINDS = ("auto", "svd", "tikhonov")
#: conjugate-gradient settings of the large-geometry fallback
CG_RTOL = 1e-4
CG_MAX_ITER = 1000


def projection_angles(n_projections: int) -> np.ndarray:
    """The ``N_p`` projection angles in degrees: ``180 a / N_p`` for ``a = 0 .. N_p - 1``."""
    n = _check_count(n_projections, "number of projections", "use e.g. --projections 23 (DDMM-Synth)")
    return np.arange(n, dtype=np.float64) * (180.0 / n)


def detector_count(height: int, width: int) -> int:
    """Default number of detector bins, ``ceil(sqrt(2) max(H, W))`` (scikit-image's ``circle=False``)."""
    return int(np.ceil(np.sqrt(2) * max(int(height), int(width))))


def _check_count(value, what: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InputError(f"the {what} must be a whole number >= 1, got {value!r}.", fix)
    return int(value)


def _image_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise InputError(f"image size must be an integer or (height, width), got {image_size!r}.",
                             "use e.g. 64 or (64, 64)") from None
    if h < 1 or w < 1:
        raise InputError(f"image size must be positive, got {(h, w)}.", "use e.g. 64 or (64, 64)")
    return h, w


def system_matrix_coo(height: int, width: int, angles_deg: Sequence[float], n_det: int, det_spacing: float = 1.0):
    """Joseph's system matrix as numpy COO arrays ``(rows, cols, values)`` (float64), rows ascending.

    ``det_spacing``: the distance between neighbouring detector bins in pixels (1 = the default geometry);
    bin ``k`` integrates along ``X cos(theta) - Y sin(theta) = (k - n_det // 2) det_spacing``.

    Row ``a * n_det + k`` is bin ``k`` of angle ``a``; column ``i * W + j`` is pixel ``(i, j)``. Vectorised
    over bins and samples; one iteration per angle.
    """
    H, W, n_det = int(height), int(width), int(n_det)
    ci, cj, ck = H // 2, W // 2, n_det // 2
    s = (np.arange(n_det, dtype=np.float64) - ck) * float(det_spacing)
    rows_all, cols_all, vals_all = [], [], []
    for a, theta in enumerate(np.deg2rad(np.asarray(angles_deg, dtype=np.float64))):
        c, sn = math.cos(theta), math.sin(theta)
        if abs(c) >= abs(sn):  # one sample per pixel row, interpolate between columns
            steps = np.arange(H)
            pos = (s[:, None] + (steps - ci)[None, :] * sn) / c + cj  # fractional column [n_det, H]
            lim, weight, along_rows = W, 1.0 / abs(c), True
        else:  # one sample per pixel column, interpolate between rows
            steps = np.arange(W)
            pos = ((steps - cj)[None, :] * c - s[:, None]) / sn + ci  # fractional row [n_det, W]
            lim, weight, along_rows = H, 1.0 / abs(sn), False
        lo = np.floor(pos)
        frac = pos - lo
        lo = lo.astype(np.int64)
        idx = np.stack([lo, lo + 1], axis=-1)  # [n_det, steps, 2]
        val = np.stack([(1.0 - frac) * weight, frac * weight], axis=-1)
        step = np.broadcast_to(steps[None, :, None], idx.shape)
        pix = step * W + idx if along_rows else idx * W + step
        ok = (idx >= 0) & (idx < lim) & (val > 0)
        row = np.broadcast_to((a * n_det + np.arange(n_det))[:, None, None], idx.shape)
        rows_all.append(row[ok])
        cols_all.append(pix[ok])
        vals_all.append(val[ok])
    return np.concatenate(rows_all), np.concatenate(cols_all), np.concatenate(vals_all)


def _csr(crow: np.ndarray, col: np.ndarray, val: np.ndarray, shape, device, dtype) -> torch.Tensor:
    index_dtype = torch.int32 if max(shape) < 2 ** 31 - 1 and val.size < 2 ** 31 - 1 else torch.int64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow).to(index_dtype), torch.from_numpy(col).to(index_dtype),
            torch.from_numpy(val).to(dtype), size=shape, device=device, check_invariants=False)


def _coo_to_csr_arrays(rows, cols, vals, n_rows):
    """CSR arrays from COO arrays whose ``rows`` are already sorted (stable within a row)."""
    counts = np.bincount(rows, minlength=n_rows)
    crow = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=crow[1:])
    return crow, cols, vals


class _SparseApply(torch.autograd.Function):
    """``mat @ x`` for a fixed sparse ``mat`` whose backward pass is ``mat_t @ grad`` (and so on)."""

    @staticmethod
    def forward(ctx, x, mat, mat_t):
        ctx.mats = (mat, mat_t)
        return torch.sparse.mm(mat, x)

    @staticmethod
    def backward(ctx, grad):
        mat, mat_t = ctx.mats
        return _SparseApply.apply(grad, mat_t, mat), None, None


class _GramSolve(torch.autograd.Function):
    """``(G + lambda I)^-1 b`` for the operator's (symmetric) regularised Gram matrix (row or pixel side)."""

    @staticmethod
    def forward(ctx, b, op):
        ctx.op = op
        return op._solve_gram(b)

    @staticmethod
    def backward(ctx, grad):
        return _GramSolve.apply(grad, ctx.op), None


class RadonOperator:
    """Parallel-beam projector ``A`` on an ``H x W`` grid with ``N_p`` views (see the module docstring).

    Parameters
    ----------
    image_size: ``H`` (square) or ``(H, W)``.
    n_projections: ``N_p``, angles uniform over ``[0, 180)`` degrees.
    device, dtype: where the matrices live and the precision of :meth:`forward` / :meth:`adjoint`
        (the pseudo-inverse solves in float64 -- float32 on ``mps`` -- and returns ``dtype``).
    n_detectors: number of bins (default :func:`detector_count`).
    reg: Tikhonov weight of the pseudo-inverse relative to ``lambda_max(A A^T)``.
    dense_max_rows: Cholesky when the smaller Gram matrix has at most this many rows, else conjugate
        gradients (default :data:`DENSE_MAX_ROWS`, or :data:`DENSE_MAX_ROWS_CUDA` on CUDA).
    angles_deg: the view angles in degrees (default: ``N_p`` uniform over ``[0, 180)``); when given, their
        number must equal ``n_projections``.
    det_spacing: distance between detector bins in pixels (default 1).
    pinv: ``"auto"`` (the exact SVD pseudo-inverse when the smaller Gram matrix has at most ``svd_max`` rows
        -- :data:`SVD_MAX`, :data:`SVD_MAX_CUDA` on CUDA -- and the device is not ``mps``; the Tikhonov one
        otherwise), ``"svd"`` (refused when it does not fit) or ``"tikhonov"``.

    Images are ``[..., H, W]`` (typically ``[B, 1, H, W]``), sinograms ``[..., N_p, n_det]``.
    """

    def __init__(self, image_size, n_projections: int, *, device="cpu", dtype: torch.dtype = torch.float32,
                 n_detectors: Optional[int] = None, reg: float = DEFAULT_REG, dense_max_rows: Optional[int] = None,
                 pinv: str = "auto", svd_max: Optional[int] = None, angles_deg: Optional[Sequence[float]] = None,
                 det_spacing: float = 1.0):
        self.height, self.width = _image_size(image_size)
        self.n_projections = _check_count(n_projections, "number of projections",
                                          "use e.g. --projections 23 (DDMM-Synth)")
        self.n_det = detector_count(self.height, self.width) if n_detectors is None else \
            _check_count(n_detectors, "number of detector bins", "omit it for the default")
        if not dtype.is_floating_point:
            raise InputError(f"the operator dtype must be floating point, got {dtype}.", "use torch.float32")
        if pinv not in PINV_KINDS:
            raise InputError(f"unknown pseudo-inverse kind {pinv!r}.", f"use one of {', '.join(PINV_KINDS)}.")
        if not (isinstance(reg, numbers.Real) and 0.0 <= float(reg) < 1.0):
            raise InputError(f"reg must be in [0, 1), got {reg!r}.", f"use the default {DEFAULT_REG}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.reg = float(reg)
        if dense_max_rows is None:
            dense_max_rows = DENSE_MAX_ROWS_CUDA if self.device.type == "cuda" else DENSE_MAX_ROWS
        self.dense_max_rows = int(dense_max_rows)
        if angles_deg is None:
            self.angles_deg = projection_angles(self.n_projections)
        else:
            self.angles_deg = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
            if self.angles_deg.size != self.n_projections or not np.isfinite(self.angles_deg).all():
                raise InputError(f"{self.angles_deg.size} view angles were given for {self.n_projections} views "
                                 "(or some are not finite).", "give one finite angle in degrees per view.")
        if not (isinstance(det_spacing, numbers.Real) and math.isfinite(det_spacing) and 0.05 <= det_spacing <= 20):
            raise InputError(f"the detector spacing must be between 0.05 and 20 model-grid pixels, got "
                             f"{det_spacing!r}.",
                             "give the spacing in mm with the model grid's pixel size (see `mrtoct info`).")
        self.det_spacing = float(det_spacing)
        self.n_pixels = self.height * self.width
        self.n_rows = self.n_projections * self.n_det
        self._solve_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._lock = threading.Lock()

        rows, cols, vals = system_matrix_coo(self.height, self.width, self.angles_deg, self.n_det, self.det_spacing)
        self.nnz = int(vals.size)
        crow, col, val = _coo_to_csr_arrays(rows, cols, vals, self.n_rows)
        self._A = _csr(crow, col, val, (self.n_rows, self.n_pixels), self.device, dtype)
        order = np.argsort(cols, kind="stable")  # transpose: sort by column, rows stay ascending
        crow_t, col_t, val_t = _coo_to_csr_arrays(cols[order], rows[order], vals[order], self.n_pixels)
        self._At = _csr(crow_t, col_t, val_t, (self.n_pixels, self.n_rows), self.device, dtype)
        row_norm2 = np.bincount(rows, weights=vals * vals, minlength=self.n_rows)
        kept = np.flatnonzero(row_norm2 > 0)
        self._kept = torch.from_numpy(kept).to(self.device)
        self.n_kept_rows = int(kept.size)
        self._diag = torch.from_numpy(row_norm2).to(self.device, self._solve_dtype)  # diag of A A^T
        self._coo = (rows, cols, vals)  # kept (numpy, CPU) for the Gram matrix; freed after factoring
        self._factor: Optional[torch.Tensor] = None
        self._lam: Optional[float] = None
        #: which Gram matrix the pseudo-inverse factors: "rows" (A A^T) or "pixels" (A^T A)
        self.gram_side = "rows" if self.n_kept_rows <= self.n_pixels else "pixels"
        gram_size = min(self.n_kept_rows, self.n_pixels)
        if svd_max is None:
            svd_max = SVD_MAX_CUDA if self.device.type == "cuda" else SVD_MAX
        max_entries = SVD_MAX_ENTRIES_CUDA if self.device.type == "cuda" else SVD_MAX_ENTRIES
        svd_fits = gram_size <= int(svd_max) and self.n_pixels * gram_size <= max_entries \
            and self.device.type != "mps"
        if pinv == "svd" and not svd_fits:
            raise InputError(f"the exact (SVD) pseudo-inverse needs a Gram matrix of {gram_size} rows and a "
                             f"{self.n_pixels} x {gram_size} factor here, more than the {svd_max} rows / "
                             f"{max_entries} entries allowed on {self.device.type}.",
                             "use a smaller grid or fewer views, or pinv='tikhonov'.")
        if pinv != "tikhonov" and svd_fits:
            self.method = "svd"
        else:
            self.method = "cholesky" if gram_size <= self.dense_max_rows else "cg"
        if self.method == "cg":
            self.gram_side = "rows"
        #: the thin SVD of the kept rows (``method == "svd"``): U [kept rows, r], s [r] descending, V [H W, r]
        self._svd: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._u_weak: Optional[torch.Tensor] = None
        self.cg_iterations: list[int] = []
        self._noise_gain: dict[int, float] = {}
        self._cg_warned = False
        self._bp: Optional[torch.Tensor] = None  # FBP's backprojector, built on first use

    # ---- shapes --------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.n_projections, self.n_det)

    def _flat_images(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or tuple(x.shape[-2:]) != self.image_shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected images [..., {self.height}, {self.width}], got {got}")
        lead = tuple(x.shape[:-2])
        return x.reshape(-1, self.n_pixels), lead

    def _flat_sinograms(self, y: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if not isinstance(y, torch.Tensor) or y.dim() < 2 or tuple(y.shape[-2:]) != self.sinogram_shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"expected sinograms [..., {self.n_projections}, {self.n_det}], got {got}")
        lead = tuple(y.shape[:-2])
        return y.reshape(-1, self.n_rows), lead

    def _apply(self, flat: torch.Tensor, mat: torch.Tensor, mat_t: torch.Tensor) -> torch.Tensor:
        out_dtype = flat.dtype if flat.is_floating_point() else self.dtype
        cols = flat.to(device=self.device, dtype=self.dtype).t()
        if cols.shape[1] == 0:
            return torch.zeros(mat.shape[0], 0, device=self.device, dtype=out_dtype).t()
        return _SparseApply.apply(cols.contiguous(), mat, mat_t).t().to(out_dtype)

    # ---- the maps ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: images ``[..., H, W]`` -> sinograms ``[..., N_p, n_det]`` (line integrals)."""
        flat, lead = self._flat_images(x)
        return self._apply(flat, self._A, self._At).reshape(*lead, *self.sinogram_shape)

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``: sinograms ``[..., N_p, n_det]`` -> images ``[..., H, W]`` (the exact transpose)."""
        flat, lead = self._flat_sinograms(y)
        return self._apply(flat, self._At, self._A).reshape(*lead, *self.image_shape)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``A+ y``: ``V diag(1 / s) U^T y`` (exact, ``method == "svd"``) or ``A^T (A A^T + lambda I)^-1 y``
        (rows that miss the image are ignored).

        The minimum-norm least-squares image for ``y`` (up to the truncation or regularisation); differentiable.
        """
        flat, lead = self._flat_sinograms(y)
        out_dtype = flat.dtype if flat.is_floating_point() else self.dtype
        self._ensure_solver()
        if self.method == "svd":
            return self._svd_apply(flat, lambda c, s: c / s[:, None])[0].reshape(*lead, *self.image_shape) \
                .to(out_dtype)
        if self.gram_side == "pixels":  # (A^T A + lambda I)^-1 A^T y
            b = self._apply(flat.to(device=self.device, dtype=self.dtype), self._At, self._A)
            x = _GramSolve.apply(b.t().to(self._solve_dtype).contiguous(), self)
            return x.t().reshape(*lead, *self.image_shape).to(out_dtype)
        yk = flat.to(device=self.device, dtype=self._solve_dtype).index_select(1, self._kept).t()
        zk = _GramSolve.apply(yk.contiguous(), self)
        z = torch.zeros(self.n_rows, zk.shape[1], device=self.device, dtype=self._solve_dtype)
        z = z.index_copy(0, self._kept, zk)
        x = _SparseApply.apply(z.to(self.dtype), self._At, self._A)
        return x.t().reshape(*lead, *self.image_shape).to(out_dtype)

    # ---- the SVD path: exact and noise-aware inverses ----------------------------------------------
    def _require_svd(self, what: str) -> None:
        if self.method != "svd":
            raise InputError(f"{what} needs the exact (SVD) pseudo-inverse, but this geometry uses {self.method} "
                             f"({self!r}).", "use a grid and view count whose smaller Gram matrix has at most "
                             f"{SVD_MAX} rows (e.g. the 64 x 64 model grid).")

    def _svd_apply(self, flat: torch.Tensor, filt) -> tuple[torch.Tensor, torch.Tensor]:
        """``V filt(U^T y_kept, s)`` for flat sinograms ``[B, n_rows]``: images ``[B, H W]`` (solve dtype) and
        the per-row gains ``filt(1, s) * s`` (``[r, B]``) used."""
        U, sv, V = self._svd
        yk = flat.to(device=self.device, dtype=self._solve_dtype).index_select(1, self._kept)
        c = U.t() @ yk.t()  # [r, B]
        coef = filt(c, sv)
        return (V @ coef).t(), coef

    @property
    def singular_values(self) -> np.ndarray:
        """The non-zero singular values of ``A`` kept by the exact pseudo-inverse, descending (float64)."""
        self._require_svd("singular_values")
        self._ensure_solver()
        return self._svd[1].double().cpu().numpy()

    @property
    def rank(self) -> int:
        """Number of singular values the exact pseudo-inverse keeps (``s > SVD_RCOND s_max``)."""
        return int(self.singular_values.size)

    def pinv_tikhonov(self, y: torch.Tensor, lam: float) -> torch.Tensor:
        """``A^T (A A^T + lam I)^-1 y = V diag(s / (s^2 + lam)) U^T y`` (absolute ``lam >= 0``; 0 = exact ``A+``).

        The posterior mean for a ``N(0, tau^2 I)`` image prior and ``N(0, sigma^2 I)`` bin noise when
        ``lam = sigma^2 / tau^2`` (module docstring). SVD path only.
        """
        self._require_svd("pinv_tikhonov")
        lam = float(lam)
        if not (lam >= 0 and math.isfinite(lam)):
            raise InputError(f"the Tikhonov weight must be a finite number >= 0, got {lam!r}.", "use e.g. 0.1.")
        flat, lead = self._flat_sinograms(y)
        out_dtype = flat.dtype if flat.is_floating_point() else self.dtype
        self._ensure_solver()
        x, _ = self._svd_apply(flat, lambda c, s: c * (s / (s * s + lam))[:, None])
        return x.reshape(*lead, *self.image_shape).to(out_dtype)

    def tikhonov_noise_gain(self, lam: float = 0.0) -> float:
        """Per-pixel RMS of ``A+_lam n`` for unit white bin noise: ``sqrt(sum_k s_k^2 / (s_k^2 + lam)^2 / (H W))``
        (``lam = 0``: the exact ``A+``, ``sqrt(sum 1 / s_k^2 / (H W))``). Closed form, SVD path only."""
        sv = self.singular_values
        return float(np.sqrt(np.sum(sv ** 2 / (sv ** 2 + float(lam)) ** 2) / self.n_pixels))

    def wiener_gains(self, y: torch.Tensor, sigma: float, band: int = WIENER_BAND) -> torch.Tensor:
        """Per singular direction gains ``[B, r]`` of :meth:`pinv_wiener` for sinograms ``[..., N_p, n_det]``."""
        self._require_svd("wiener_gains")
        flat, _ = self._flat_sinograms(y)
        self._ensure_solver()
        U = self._svd[0]
        c = U.t() @ flat.to(device=self.device, dtype=self._solve_dtype).index_select(1, self._kept).t()
        return self._band_gains(c, float(sigma), int(band)).t()

    def _band_gains(self, c: torch.Tensor, sigma: float, band: int) -> torch.Tensor:
        """Empirical Wiener gains ``[r, B]`` for coefficients ``c = U^T y`` ``[r, B]`` (module docstring)."""
        if sigma <= 0:
            return torch.ones_like(c)
        r, b = c.shape
        n_bands = -(-r // band)
        pad = n_bands * band - r
        p = torch.nn.functional.pad(c * c, (0, 0, 0, pad))  # [n_bands * band, B]
        counts = torch.full((n_bands,), float(band), dtype=c.dtype, device=c.device)
        counts[-1] = band - pad
        power = p.reshape(n_bands, band, b).sum(1) / counts[:, None]  # mean c^2 per band [n_bands, B]
        var = sigma * sigma
        threshold = var * (1.0 + WIENER_GATE * torch.sqrt(2.0 / counts))[:, None]
        gain = torch.where(power > threshold, 1.0 - var / power.clamp_min(1e-300), torch.zeros_like(power))
        return gain.repeat_interleave(band, dim=0)[:r]

    def pinv_wiener(self, y: torch.Tensor, sigma: float, band: int = WIENER_BAND) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-aware inverse ``V diag(g / s) U^T y`` with per-band empirical Wiener gains ``g`` for white bin
        noise of std ``sigma`` (module docstring); ``sigma = 0`` is the exact ``A+``.

        Returns the images ``[..., H, W]`` and, per sinogram (``[...]``), the per-pixel RMS of the noise the
        filter lets through, ``sigma sqrt(sum_k g_k^2 / s_k^2 / (H W))`` -- the image-domain ``sigma_n`` of
        DDMM-Synth Eqs. 8-13 for this filter. SVD path only.
        """
        self._require_svd("pinv_wiener")
        sigma = float(sigma)
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise InputError(f"the noise sigma must be a finite number >= 0, got {sigma!r}.", "use e.g. 0.1.")
        flat, lead = self._flat_sinograms(y)
        out_dtype = flat.dtype if flat.is_floating_point() else self.dtype
        self._ensure_solver()
        holder = {}

        def filt(c, s):
            g = self._band_gains(c, sigma, int(band))
            holder["noise"] = sigma * torch.sqrt(((g / s[:, None]) ** 2).sum(0) / self.n_pixels)
            return c * g / s[:, None]

        x, _ = self._svd_apply(flat, filt)
        return x.reshape(*lead, *self.image_shape).to(out_dtype), holder["noise"].reshape(lead)


    def estimate_noise_sigma(self, y: torch.Tensor) -> tuple[float, int]:
        """Per-bin noise std estimated from sinograms ``[..., N_p, n_det]`` alone, and its degrees of freedom.

        The part of the data outside the range of ``A``, ``(I - U U^T) y``, cannot come from any image: for
        ``y = A x + n`` it is the projection of the noise onto the ``m - r`` directions orthogonal to the
        range (``m`` rays that cross the image, ``r`` = :attr:`rank`; the views' consistency conditions). For
        white noise ``E ||(I - U U^T) y||^2 = sigma^2 (m - r)`` per sinogram (``U`` here also holds the weak
        directions below the inverse's cut-off, down to :data:`WEAK_RCOND` of ``s_max`` --
        :data:`WEAK_RCOND_PIXELS` on the pixel-side Gram --, which still carry signal), so
        ``sigma^2 = sum ||(I - U U^T) y||^2 / (B (m - r))`` over the ``B`` sinograms (relative standard error
        ``1 / sqrt(2 B (m - r))``). Whatever the operator does not model (scatter, beam hardening, a detector
        offset) lands there too and counts as noise. SVD path only; ``(nan, 0)`` when ``m == r``.
        """
        self._require_svd("estimate_noise_sigma")
        flat, _ = self._flat_sinograms(y)
        self._ensure_solver()
        U = self._svd[0].to(torch.float64)
        if self._u_weak is not None and self._u_weak.shape[1]:
            U = torch.cat([U, self._u_weak.to(torch.float64)], dim=1)
        yk = flat.to(device=self.device, dtype=torch.float64).index_select(1, self._kept).t()  # [m, B]
        resid = yk - U @ (U.t() @ yk)
        dof = (self.n_kept_rows - U.shape[1]) * yk.shape[1]
        if dof <= 0:
            return math.nan, 0
        return float(torch.sqrt(resid.pow(2).sum() / dof)), int(dof)

    def project_out_range(self, x: torch.Tensor) -> torch.Tensor:
        """``(I - A+ A) x``: the null-space part of ``x``."""
        return x - self.pinv(self.forward(x)).to(x.dtype)

    def fbp(self, y: torch.Tensor, filter_name: str = "ramp") -> torch.Tensor:
        """Filtered backprojection of sinograms ``[..., N_p, n_det]`` -> images ``[..., H, W]``.

        Ram-Lak ramp filter (``"ramp"``, built from its band-limited spatial kernel, which avoids the DC
        bias of a sampled ``|nu|``) or ``"hann"``, zero-padded to at least twice the detector length,
        then a pixel-driven backprojection (each pixel linearly interpolates the filtered projection at
        ``X cos - Y sin``; a sparse matrix built on first use), times ``pi / N_p``. For display and
        baselines: with few views it shows the usual streaks; it is not the pseudo-inverse.
        """
        flat, lead = self._flat_sinograms(y)
        work = flat.to(device=self.device, dtype=self.dtype).reshape(-1, self.n_projections, self.n_det)
        size = max(64, 1 << int(math.ceil(math.log2(2 * self.n_det))))
        n = torch.cat([torch.arange(1, size // 2 + 1, 2), torch.arange(size // 2 - 1, 0, -2)]).to(torch.float64)
        kernel = torch.zeros(size, dtype=torch.float64)
        kernel[0] = 0.25
        kernel[1::2] = -1.0 / (math.pi * n) ** 2
        response = torch.fft.fft(kernel).real  # ~ |nu| (cycles per bin)
        if filter_name == "hann":
            freq = torch.fft.fftfreq(size, dtype=torch.float64)
            response = response * (0.5 + 0.5 * torch.cos(2 * math.pi * freq))
        elif filter_name != "ramp":
            raise InputError(f"unknown FBP filter {filter_name!r}.", "use 'ramp' or 'hann'.")
        spec = torch.fft.rfft(work.to(torch.float64), n=size, dim=-1)
        filt = torch.fft.irfft(spec * response[: size // 2 + 1].to(self.device), n=size, dim=-1)[..., : self.n_det]
        filt = filt.to(self.dtype).reshape(-1, self.n_rows)
        out = torch.sparse.mm(self._backprojector(), filt.t()).t() * (math.pi / self.n_projections)
        return out.reshape(*lead, *self.image_shape).to(flat.dtype if flat.is_floating_point() else self.dtype)

    def _backprojector(self) -> torch.Tensor:
        """Pixel-driven backprojection as a CSR matrix ``[H W, N_p n_det]`` (built on first use): each
        pixel linearly interpolates every view at ``X cos(theta) - Y sin(theta)`` (2 entries per view)."""
        if self._bp is None:
            ii = np.arange(self.height) - self.height // 2
            jj = np.arange(self.width) - self.width // 2
            th = np.deg2rad(self.angles_deg)
            pos = ((jj[None, None, :] * np.cos(th)[:, None, None] - ii[None, :, None] * np.sin(th)[:, None, None])
                   / self.det_spacing + self.n_det // 2).reshape(self.n_projections, -1).T  # [H W, N_p]
            lo = np.floor(pos)
            frac = pos - lo
            lo = lo.astype(np.int64)
            bins = np.stack([lo, lo + 1], axis=-1)  # [H W, N_p, 2]
            vals = np.stack([1.0 - frac, frac], axis=-1)
            col = np.arange(self.n_projections)[None, :, None] * self.n_det + bins
            row = np.broadcast_to(np.arange(self.n_pixels)[:, None, None], bins.shape)
            ok = (bins >= 0) & (bins < self.n_det) & (vals > 0)
            crow, c, v = _coo_to_csr_arrays(row[ok], col[ok], vals[ok], self.n_pixels)
            self._bp = _csr(crow, c, v, (self.n_pixels, self.n_rows), self.device, self.dtype)
        return self._bp

    def pinv_noise_gain(self, probes: int = 64) -> float:
        """Per-pixel RMS of ``A+ n`` for white noise ``n`` of unit variance on every detector bin.

        ``sqrt(E ||A+ n||^2 / (H W)) = sqrt(trace(A+ A+^T) / (H W))``, estimated from ``probes`` seeded
        draws (deterministic; a few per cent accurate with the default 64) and cached. Multiplying a
        per-bin measurement noise sigma by it gives the image-domain noise level that DDMM-Synth Eqs. 8-13
        call ``sigma_n`` (they model ``A+ n`` as ``N(0, sigma_n^2 I)``). With the exact (SVD) inverse it is
        the closed form :meth:`tikhonov_noise_gain` ``(0)`` instead.
        """
        if self.method == "svd":
            return self.tikhonov_noise_gain(0.0)
        key = int(probes)
        if key not in self._noise_gain:
            g = torch.Generator(device="cpu").manual_seed(20230417)
            n = torch.randn(key, self.n_projections, self.n_det, generator=g, dtype=torch.float64)
            x = self.pinv(n.to(device=self.device, dtype=self._solve_dtype))
            self._noise_gain[key] = float(x.double().pow(2).mean().sqrt())
        return self._noise_gain[key]

    # ---- the Gram solve ------------------------------------------------------------------------
    @property
    def regularization(self) -> float:
        """The absolute ``lambda`` added to ``A A^T`` (computed on first use; 0 for the exact SVD inverse)."""
        self._ensure_solver()
        return float(self._lam)

    def factorize(self) -> "RadonOperator":
        """Prepare the pseudo-inverse now (Cholesky factor or CG setup) instead of on first use."""
        self._ensure_solver()
        return self

    def _gram_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A A^T v`` for ``v`` ``[n_rows, B]`` (solve dtype)."""
        w = torch.sparse.mm(self._At, v.to(self.dtype))
        return torch.sparse.mm(self._A, w).to(v.dtype)

    def _lambda_max_power(self, matvec, n: int, iters: int = 50) -> float:
        g = torch.Generator(device="cpu").manual_seed(1234)
        v = torch.rand(n, 1, generator=g, dtype=torch.float64).to(self.device, self._solve_dtype) + 0.5
        lam = 0.0
        for _ in range(iters):
            w = matvec(v)
            lam_new = float(torch.linalg.vector_norm(w) / torch.linalg.vector_norm(v))
            v = w / torch.linalg.vector_norm(w)
            if abs(lam_new - lam) <= 1e-6 * lam_new:
                lam = lam_new
                break
            lam = lam_new
        return lam

    def _dense_gram(self) -> torch.Tensor:
        """The Gram matrix of :attr:`gram_side` as a dense float64 CPU tensor: ``A_k A_k^T`` over the kept
        rows, or ``A^T A``.

        Built with scipy's sparse-sparse product (a few times faster than torch's on CPU), in row
        blocks so that the sparse intermediate stays small.
        """
        rows, cols, vals = self._coo
        kept = self._kept.cpu().numpy()
        remap = np.full(self.n_rows, -1, dtype=np.int64)
        remap[kept] = np.arange(kept.size)
        A = sp.csr_matrix((vals, (remap[rows], cols)), shape=(kept.size, self.n_pixels))
        left, right = (A, A.T.tocsr()) if self.gram_side == "rows" else (A.T.tocsr(), A)
        n = left.shape[0]
        G = np.empty((n, n), dtype=np.float64)
        block = 1024
        for start in range(0, n, block):
            G[start:start + block] = (left[start:start + block] @ right).toarray()
        return torch.from_numpy(G)

    def _ensure_solver(self) -> None:
        if self._lam is not None:
            return
        with self._lock:
            if self._lam is not None:
                return
            if self.method == "svd":
                self._factor_svd()
                lam = 0.0
            elif self.method == "cholesky":
                G = self._dense_gram().to(device=self.device, dtype=self._solve_dtype)
                lam_max = float(torch.linalg.eigvalsh(G)[-1]) if G.shape[0] <= 512 else \
                    self._lambda_max_power(lambda v: G @ v, G.shape[0])
                lam = self.reg * lam_max
                eye = torch.eye(G.shape[0], device=self.device, dtype=G.dtype)
                for _ in range(8):
                    L, info = torch.linalg.cholesky_ex(G + (lam or 1e-300) * eye)
                    if int(info) == 0:
                        break
                    lam = max(lam * 10.0, 1e-12 * max(lam_max, 1.0))  # not positive definite in floating point
                else:
                    raise RuntimeError("could not factor the Gram matrix of the Radon operator")
                del G, eye
                # keep (G + lambda I)^-1 itself: applying it is one matrix product, several times faster
                # than two triangular solves for a batch of sinograms (same memory as the factor)
                self._factor = torch.cholesky_inverse(L)
                del L
            else:
                lam_max = self._lambda_max_power(self._gram_matvec, self.n_rows)
                lam = self.reg * lam_max
            self._coo = None
            self._lam = float(lam)

    def _factor_svd(self) -> None:
        """Thin SVD of the kept rows from the eigen-decomposition of the smaller Gram matrix (float64)."""
        G = self._dense_gram().to(device=self.device, dtype=torch.float64)
        w, Q = torch.linalg.eigh(G)
        del G
        w, Q = w.flip(0), Q.flip(1)  # descending
        sv = w.clamp_min(0.0).sqrt()
        keep = sv > SVD_RCOND * sv[0]
        # weak directions (below the cut-off but above the eigen-solver's resolution): not inverted, but they
        # are not pure noise either, so the noise estimate leaves them out
        weak = ~keep & (sv > (WEAK_RCOND if self.gram_side == "rows" else WEAK_RCOND_PIXELS) * sv[0])
        q_weak, s_weak = Q[:, weak], sv[weak]
        sv, Q = sv[keep], Q[:, keep]
        r = int(sv.numel())
        z = torch.zeros(self.n_rows, r, device=self.device, dtype=torch.float64)
        At64 = self._At.to(torch.float64) if self.dtype != torch.float64 else self._At
        A64 = self._A.to(torch.float64) if self.dtype != torch.float64 else self._A
        if self.gram_side == "rows":
            U = Q
            V = torch.sparse.mm(At64, z.index_copy(0, self._kept, U)) / sv
        else:
            V = Q
            U = torch.sparse.mm(A64, V).index_select(0, self._kept) / sv
        self._svd = (U.contiguous(), sv, V.contiguous())
        if self.gram_side == "rows":
            self._u_weak = q_weak.contiguous()
        elif q_weak.shape[1]:  # U = A V / s for the weak ones, orthonormalised against U and each other
            u_weak = torch.sparse.mm(A64, q_weak).index_select(0, self._kept) / s_weak
            u_weak = u_weak - U @ (U.t() @ u_weak)
            self._u_weak = torch.linalg.qr(u_weak).Q.contiguous()
    def _solve_gram(self, b: torch.Tensor) -> torch.Tensor:
        """Solve ``(G + lambda I) z = b`` for ``[n, B]`` right-hand sides (solve dtype): kept rows for the
        row Gram, pixels for the pixel Gram."""
        self._ensure_solver()
        if self.method == "cholesky":
            return self._factor @ b
        # matrix-free CG on the full row set (dropped rows have zero right-hand side and stay zero)
        full = torch.zeros(self.n_rows, b.shape[1], device=self.device, dtype=b.dtype).index_copy(0, self._kept, b)
        return self._cg(full).index_select(0, self._kept)

    def _cg(self, b: torch.Tensor) -> torch.Tensor:
        """Jacobi-preconditioned CG on ``(G + lambda I) z = b``, column by column in parallel.

        Stops when every column is consistent, ``||b - G z|| <= CG_RTOL ||b||`` (what N-SMI needs; the
        regularised system itself converges much more slowly in its weakest directions), or after
        :data:`CG_MAX_ITER` iterations (with a warning).
        """
        lam = self._lam
        inv_diag = 1.0 / (self._diag + lam)
        x = torch.zeros_like(b)
        r = b.clone()
        z = inv_diag[:, None] * r
        p = z.clone()
        rz = (r * z).sum(0)
        b_norm = torch.linalg.vector_norm(b, dim=0).clamp_min(1e-300)
        it, converged = 0, False
        for it in range(1, CG_MAX_ITER + 1):
            q = self._gram_matvec(p) + lam * p
            alpha = rz / (p * q).sum(0).clamp_min(1e-300)
            x = x + alpha * p
            r = r - alpha * q
            if bool((torch.linalg.vector_norm(r + lam * x, dim=0) <= CG_RTOL * b_norm).all()):
                converged = True
                break
            z = inv_diag[:, None] * r
            rz_new = (r * z).sum(0)
            p = z + (rz_new / rz.clamp_min(1e-300)) * p
            rz = rz_new
        self.cg_iterations.append(it)
        if not converged and not self._cg_warned:
            self._cg_warned = True
            warnings.warn(f"the Radon pseudo-inverse (conjugate gradients, {self.n_rows} rays) stopped after "
                          f"{CG_MAX_ITER} iterations before reaching a relative consistency of {CG_RTOL:g}; "
                          "fewer views, a smaller grid or a GPU (dense factor) avoid this", RuntimeWarning)
        return x

    # ---- bookkeeping ---------------------------------------------------------------------------
    def memory_bytes(self) -> dict:
        """Bytes held: the sparse ``A`` and ``A^T`` (``matrix``), the dense ``(G + lambda I)^-1`` or the SVD's
        ``U``, ``s``, ``V`` (``factor``) and FBP's backprojector (``backprojector``, 0 until FBP is used)."""
        def sparse_bytes(m):
            if m is None:
                return 0
            return sum(t.numel() * t.element_size() for t in (m.crow_indices(), m.col_indices(), m.values()))
        factor = 0 if self._factor is None else self._factor.numel() * self._factor.element_size()
        if self._svd is not None:
            factor += sum(t.numel() * t.element_size() for t in self._svd)
        return {"matrix": sparse_bytes(self._A) + sparse_bytes(self._At), "factor": factor,
                "backprojector": sparse_bytes(self._bp)}

    def __repr__(self) -> str:
        return (f"RadonOperator({self.height}x{self.width}, N_p={self.n_projections}, n_det={self.n_det}, "
                f"nnz={self.nnz}, pinv={self.method}/{self.gram_side}, device={self.device}, dtype={self.dtype})")


# ------------------------------------------------------------------------------------------ cache
_CACHE: "OrderedDict[tuple, RadonOperator]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
#: operators kept by :func:`get_operator` (least recently used ones are dropped)
CACHE_SIZE = 8


def _device_key(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def get_operator(image_size, n_projections: int, device="cpu", dtype: torch.dtype = torch.float32,
                 n_detectors: Optional[int] = None, reg: float = DEFAULT_REG, pinv: str = "auto",
                 angles_deg: Optional[Sequence[float]] = None, det_spacing: float = 1.0) -> RadonOperator:
    """The :class:`RadonOperator` for this geometry, device and dtype, from an LRU cache of
    :data:`CACHE_SIZE` operators (so the pseudo-inverse is factored once per geometry)."""
    h, w = _image_size(image_size)
    dev = _device_key(device)
    angles_key = None if angles_deg is None else tuple(float(a) for a in np.asarray(angles_deg).reshape(-1))
    key = (h, w, int(n_projections), str(dev), dtype, n_detectors, float(reg), str(pinv), angles_key,
           float(det_spacing))
    with _CACHE_LOCK:
        op = _CACHE.get(key)
        if op is not None:
            _CACHE.move_to_end(key)
            return op
    op = RadonOperator((h, w), n_projections, device=dev, dtype=dtype, n_detectors=n_detectors, reg=reg, pinv=pinv,
                       angles_deg=angles_deg, det_spacing=det_spacing)
    with _CACHE_LOCK:
        _CACHE[key] = op
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return op


def clear_operator_cache() -> None:
    """Forget all cached operators (frees their matrices and factors)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def simulate_measurements(x_model: torch.Tensor, operator: RadonOperator, noise_sigma: float = 0.0,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sparse-view measurements ``y = A x + n``, ``n ~ N(0, noise_sigma^2 I)`` (DDMM-Synth Eq. 2).

    Units: ``x_model`` is CT in the model intensity range ``[-1, 1]`` (:func:`..intensity.hu_to_model`),
    ``[..., H, W]`` on the model grid; ``y`` is ``[..., N_p, n_det]`` in *model units x pixel lengths*
    (raw line integrals, no normalisation), and ``noise_sigma`` is the standard deviation of the
    independent Gaussian noise added to every detector bin, in those same units. A ray through the middle
    of a 64-pixel grid of water (-0.5 model units) measures about -32, so ``noise_sigma = 1`` is a 3 %
    error on such a ray; see :mod:`..methods.ddmm_synth` for how this relates to the paper's ``sigma_n``.
    ``generator`` (on the operator's device) makes the noise reproducible.
    """
    if isinstance(noise_sigma, bool) or not isinstance(noise_sigma, numbers.Real) or not math.isfinite(noise_sigma) \
            or noise_sigma < 0:
        raise InputError(f"the measurement noise sigma must be a finite number >= 0, got {noise_sigma!r}.",
                         "use --noise-sigma 0 for noiseless measurements, or e.g. 0.5")
    y = operator.forward(x_model)
    if noise_sigma > 0:
        n = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        y = y + float(noise_sigma) * n
    return y
