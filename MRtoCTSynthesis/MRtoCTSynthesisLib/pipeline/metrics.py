"""Image-quality metrics for synthetic CT, with the SynthRAD challenge conventions.

All metrics compare a prediction (synthetic CT) with a reference CT, both in Hounsfield units, optionally
restricted to a mask (e.g. the body outline). Arrays are numpy arrays in ``(z, y, x)`` order or
:class:`~MRtoCTSynthesisLib.io.volume.Volume` objects (then both must lie on the same grid). Everything is
computed in float64. Only numpy and scipy are needed at run time.

Conventions
-----------
* **MAE / ME** (:func:`mae`, :func:`me`): mean absolute error and mean signed error ``pred - ref`` in HU
  over the voxels inside the mask, on the raw HU values (no clipping).
* **PSNR** (:func:`psnr`): both images are clipped to ``[HU_MIN, HU_MAX]`` = [-1024, 3071] HU first; the
  MSE is taken inside the mask and ``PSNR = 10 log10(data_range**2 / MSE)`` with ``data_range = 4095`` by
  default; ``MSE == 0`` gives ``inf``.
* **SSIM** (:func:`ssim`): the definition of scikit-image's
  ``structural_similarity(..., data_range=R, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
  -- Gaussian-weighted local means/variances/covariance (``sigma = 1.5``, kernel truncated at 3.5 sigma, i.e.
  an 11-tap window, ``reflect`` borders), ``K1 = 0.01``, ``K2 = 0.03``. The SSIM map is computed on the
  whole 2D slice or 3D volume, after clipping to ``[HU_MIN, HU_MAX]`` and (``shift=True``, the default)
  shifting by ``-HU_MIN`` to ``[0, data_range]`` as SynthRAD's evaluation code does. The shift matters:
  SSIM's luminance term ``(2 mu_x mu_y + C1) / (mu_x**2 + mu_y**2 + C1)`` is not shift-invariant, and with
  raw (negative) HU it can even change sign. ``shift=False`` uses the clipped raw HU.

  *Border handling.* Like scikit-image, the map is averaged only over voxels at least ``(win_size - 1) // 2``
  (= 5 for ``sigma = 1.5``) voxels from every border, where the reflected padding does not reach into the
  window average. With a mask, the average is over the voxels that are inside the mask **and** in that
  cropped interior (SynthRAD does the same). Only when that intersection is empty (a mask lying entirely in
  the border strip) is the average taken over all mask voxels instead. Without a mask the value equals
  scikit-image's mean SSIM. Every axis the SSIM runs along must be at least ``win_size`` (11) long, as in
  scikit-image.

  ``fill_outside=True`` additionally sets voxels outside the mask to ``HU_MIN`` in both images before the
  map is computed (the SynthRAD 2023 evaluation code does this); the default keeps the images as they are
  (full-image SSIM map, masked mean).
* **MS-SSIM** (:func:`ms_ssim`): multi-scale SSIM (Wang, Simoncelli & Bovik, 2003), 2D per slice, with the
  weights ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``. At scales ``1..M-1`` the mean contrast-structure
  term ``cs`` is used, at the coarsest scale ``M`` the mean full SSIM (luminance x cs);
  ``MS-SSIM = prod_j max(v_j, 0) ** w_j`` (negative means are clamped to 0, so a fractional power stays
  real). Between scales both images are 2x2 average-pooled (an odd last row/column is dropped); the mask is
  pooled with "any" (a coarse pixel is inside when any of its four fine pixels is). A scale is usable only
  when both in-plane sides are >= ``win_size`` (11) at that scale, so 5 scales need sides >= 176. When all
  scales fit the weights are used as given (the standard five sum to 1.0001, as published); with fewer
  usable scales the first ``M`` weights are used, renormalised to sum to 1 (see :func:`ms_ssim_scales`), and
  a :class:`MetricWarning` says so; with one scale MS-SSIM therefore equals SSIM (when SSIM >= 0). When not
  even one scale fits the result is NaN and a :class:`MetricWarning` says why.

Presets
-------
``evaluate(..., preset=...)`` (the ``--metrics`` option) chooses the definitions; every result dict says which
one produced it (``"preset"``):

* ``default``: the conventions above (range [-1024, 3071] HU, Gaussian 11-tap SSIM, 2D MS-SSIM). They
  follow the model's CT mapping, *not* the SynthRAD challenges' code.
* ``synthrad2023`` (alias ``synthrad``): the SynthRAD2023 image metrics as their evaluation code defines them
  (``SynthRAD2023/metrics``, ``functions/image_metrics.py``, read on 2026-12-02). MAE in HU inside the mask on
  the raw values; PSNR with both images clipped to ``[-1024, 3000]`` HU, the squared error averaged over the
  mask voxels and ``data_range = 4024``; SSIM over the whole volume (3D when it has >= 7 slices) with
  scikit-image's default window -- a 7 x 7 (x 7) *uniform* filter (``scipy.ndimage.uniform_filter``,
  ``reflect`` borders), sample covariance (``N / (N - 1)``, ``N = 7^ndim``), ``K1 = 0.01``, ``K2 = 0.03``,
  ``data_range = 4024`` -- after clipping both images to ``[-1024, 3000]``, setting every voxel outside the
  mask to -1024 in both, and shifting by +1024 so all values are >= 0; the map is averaged over the mask
  voxels that lie at least 3 voxels from every border (their ``crop(map, 3)[crop(mask, 3)]``). Their code has
  no MS-SSIM. Their pipeline casts the images to float32 first (SimpleITK), so scikit-image computes
  their SSIM in float32; here everything is float64 (differences of order 1e-6).
* ``synthrad2025``: the SynthRAD2025 evaluation code (``SynthRAD2025/evaluation``, ``image_metrics.py``, last
  changed 2025-05-12, when the range became ``[-1024, 3071]``). Both images are set to -1024 outside the mask
  first; MAE as above; PSNR clipped to ``[-1024, 3071]`` with ``data_range = 4095`` over the mask voxels;
  MS-SSIM in 3D: images clipped, outside-mask voxels set to -1024, shifted by +1024, every axis shorter than
  97 voxels padded to 97 by repeating the edge values (image and mask, split evenly before and after), then
  5 scales with weights ``w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``. At scale ``j`` the map is
  ``L^w_j C^w_j S^w_j`` with ``L = max(0, (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1))``,
  ``C = max(0, (2 s_x s_y + C2) / (v_x + v_y + C2))``, ``S = max(0, (v_xy + C3) / (s_x s_y + C3))``,
  ``s = sqrt(max(v, 0))``, ``C3 = C2 / 2`` (the same uniform 7^3 window and sample covariance as above); its
  mean over the mask voxels at least 3 voxels from the borders is ``m_j``; then the images are averaged over
  2 x 2 x 2 blocks (their ``fftconvolve(..., ones(2,2,2)/8, mode="same")[::2, ::2, ::2]``, which pairs voxels
  ``(2k - 1, 2k)`` along each axis with a zero before the first one) and the mask subsampled
  (``mask[::2, ::2, ::2]``). ``MS-SSIM = prod_j clip(m_j, 0, 1)`` (the weights are exponents inside the
  map, so the luminance term enters every scale). Their score uses only this masked MS-SSIM (no plain SSIM).

For the synthrad presets, volumes with fewer than 7 slices (SSIM) get the mean of per-slice 2D values
(``ssim_mode`` says so); MS-SSIM always runs in 3D, since the padding to 97 makes every volume fit.

Large volumes are processed in blocks of slices (with a halo for the 3D Gaussian filter), so memory stays
bounded and the results equal the whole-volume computation exactly.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io.intensity import HU_MAX, HU_MIN, HU_RANGE
from ..io.volume import Volume, require_same_geometry
from ..names import METRIC_PRESETS

DATA_RANGE = HU_RANGE  # 4095 HU: the PSNR/SSIM data range is the fixed CT mapping's range
K1 = 0.01
K2 = 0.03
TRUNCATE = 3.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# Voxels per block when filtering large volumes (float64; about ten such arrays are alive at once).
_BLOCK_VOXELS = 4_000_000

__all__ = [
    "HU_MIN", "HU_MAX", "DATA_RANGE", "MS_SSIM_WEIGHTS", "MetricWarning",
    "mae", "me", "psnr", "ssim", "ms_ssim", "ms_ssim_scales", "ssim_window_size",
    "evaluate", "format_table", "mean_std", "METRIC_PRESETS", "SYNTHRAD_RANGES", "synthrad_ssim",
    "synthrad_ms_ssim", "synthrad_psnr", "evaluate_synthrad", "check_preset",
]

#: HU clipping range of each SynthRAD edition's evaluation code
SYNTHRAD_RANGES = {"synthrad2023": (-1024.0, 3000.0), "synthrad2025": (-1024.0, 3071.0)}
SYNTHRAD_WIN = 7
SYNTHRAD_PAD = 3
SYNTHRAD_MS_SIZE = 97


def check_preset(preset: str) -> str:
    """The canonical preset name (``synthrad`` -> ``synthrad2023``); :class:`InputError` for unknown ones."""
    if preset not in METRIC_PRESETS:
        raise InputError(f"unknown metrics preset {preset!r}.", f"use one of {', '.join(METRIC_PRESETS)}.")
    return "synthrad2023" if preset == "synthrad" else preset


class MetricWarning(UserWarning):
    """A metric could not be computed as asked (the value returned is NaN or uses fewer scales)."""


# ----------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------

def _unwrap(x, what: str) -> np.ndarray:
    arr = x.array if isinstance(x, Volume) else np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{what} is not a numeric array (dtype {arr.dtype}).", "pass a numpy array of numbers.")
    return arr


def _prepare(pred, ref, mask, *, ndims: Sequence[int] | None = None):
    """Validate inputs; return ``(pred, ref, mask_bool_or_None)`` as numpy arrays (pred/ref not yet cast)."""
    if isinstance(pred, Volume) and isinstance(ref, Volume):
        require_same_geometry(ref, pred, "reference CT", "prediction")
    p = _unwrap(pred, "prediction")
    r = _unwrap(ref, "reference")
    if p.shape != r.shape:
        raise InputError(
            f"prediction shape {p.shape} and reference shape {r.shape} differ.",
            "resample the prediction onto the reference grid (or pass the matching volumes).",
        )
    if p.size == 0:
        raise InputError(f"the images are empty (shape {p.shape}).", "pass non-empty images.")
    if ndims is not None and p.ndim not in ndims:
        want = " or ".join(f"{d}D" for d in ndims)
        raise InputError(
            f"the images are {p.ndim}D (shape {p.shape}); {want} arrays are needed.",
            "pass a single slice (y, x) or a volume (z, y, x)." if 2 in ndims else "pass a volume (z, y, x).",
        )
    for arr, what in ((p, "prediction"), (r, "reference")):
        if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            if bad:
                raise InputError(f"{what} has {bad} NaN/Inf voxels.",
                                 "replace them (e.g. with -1024 HU) before computing metrics.")
    m = None
    if mask is not None:
        if isinstance(mask, Volume):
            for other, what in ((ref, "reference CT"), (pred, "prediction")):
                if isinstance(other, Volume):
                    require_same_geometry(other, mask, what, "mask")
                    break
        m = _unwrap(mask, "mask")
        if m.shape != p.shape:
            raise InputError(
                f"mask shape {m.shape} differs from the image shape {p.shape}.",
                "pass a mask on the same grid as the images (resample it with nearest-neighbour interpolation).",
            )
        m = m if m.dtype == bool else (m > 0)
        if not m.any():
            raise InputError("the mask is empty (no voxel > 0).",
                             "pass a mask that covers the region to evaluate, or no mask for the whole image.")
    return p, r, m


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise InputError(f"gaussian_sigma must be a positive number (got {sigma}).", "use e.g. 1.5 (the default).")
    return sigma


def _check_data_range(data_range: float) -> float:
    data_range = float(data_range)
    if not (data_range > 0 and math.isfinite(data_range)):
        raise InputError(f"data_range must be a positive number (got {data_range}).",
                         f"use the HU range width, {DATA_RANGE:g} by default.")
    return data_range


def ssim_window_size(gaussian_sigma: float = 1.5) -> int:
    """Side of the SSIM window for a Gaussian of ``gaussian_sigma`` truncated at 3.5 sigma (11 for 1.5)."""
    return 2 * int(TRUNCATE * float(gaussian_sigma) + 0.5) + 1


def _to_hu_range(a: np.ndarray, shift: bool) -> np.ndarray:
    out = np.clip(a.astype(np.float64, copy=False), HU_MIN, HU_MAX)
    if shift:
        out -= HU_MIN
    return out


# ----------------------------------------------------------------------------------------------------------
# MAE / ME / PSNR
# ----------------------------------------------------------------------------------------------------------

def _diff_in_mask(pred, ref, mask, clip: bool) -> np.ndarray:
    p, r, m = _prepare(pred, ref, mask)
    p = p.astype(np.float64, copy=False)
    r = r.astype(np.float64, copy=False)
    if m is not None:
        p, r = p[m], r[m]
    if clip:
        p, r = np.clip(p, HU_MIN, HU_MAX), np.clip(r, HU_MIN, HU_MAX)
    return (p - r).ravel()


def mae(pred, ref, mask=None) -> float:
    """Mean absolute error ``mean(|pred - ref|)`` in HU over the voxels inside ``mask`` (all when None)."""
    return float(np.mean(np.abs(_diff_in_mask(pred, ref, mask, clip=False))))


def me(pred, ref, mask=None) -> float:
    """Mean (signed) error ``mean(pred - ref)`` in HU inside ``mask``: > 0 means the prediction is too dense."""
    return float(np.mean(_diff_in_mask(pred, ref, mask, clip=False)))


def _psnr_from_mse(mse: float, data_range: float) -> float:
    if mse == 0:
        return math.inf
    return float(10.0 * math.log10(data_range * data_range / mse))


def psnr(pred, ref, mask=None, data_range: float = DATA_RANGE) -> float:
    """Peak signal-to-noise ratio in dB: both clipped to ``[HU_MIN, HU_MAX]``, MSE inside ``mask``.

    ``PSNR = 10 log10(data_range**2 / MSE)``; identical images (MSE 0) give ``inf``.
    """
    data_range = _check_data_range(data_range)
    d = _diff_in_mask(pred, ref, mask, clip=True)
    return _psnr_from_mse(float(np.mean(d * d)), data_range)


# ----------------------------------------------------------------------------------------------------------
# SSIM core (blocks of slices, float64)
# ----------------------------------------------------------------------------------------------------------

def _ssim_terms(x: np.ndarray, y: np.ndarray, sigmas, data_range: float):
    """Luminance and contrast-structure maps of float64 arrays ``x``, ``y`` (scikit-image's formulas)."""
    def filt(a):
        return ndimage.gaussian_filter(a, sigmas, mode="reflect", truncate=TRUNCATE)

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    lum = (2.0 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    cs = (2.0 * vxy + c2) / (vx + vy + c2)
    return lum, cs


def _block_ranges(n: int, per_slice: int, halo: int):
    """Yield ``(out0, out1, in0, in1)``: output slices ``out0:out1`` computed from input slices ``in0:in1``."""
    step = max(1, _BLOCK_VOXELS // max(1, per_slice) - 2 * halo, 4 * halo)
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        yield s0, s1, max(0, s0 - halo), min(n, s1 + halo)


def _slice_sums(vmap: np.ndarray, mask: np.ndarray | None, pad: int):
    """Per-slice sums/counts of ``vmap`` (n, H, W): inside mask & in-plane interior, and inside the mask."""
    n, h, w = vmap.shape
    interior = (slice(None), slice(pad, h - pad), slice(pad, w - pad))
    if mask is None:
        s_int = vmap[interior].sum(axis=(1, 2))
        n_int = np.full(n, (h - 2 * pad) * (w - 2 * pad), dtype=np.int64)
        s_all = vmap.sum(axis=(1, 2))
        n_all = np.full(n, h * w, dtype=np.int64)
    else:
        mi = mask[interior]
        s_int = np.where(mi, vmap[interior], 0.0).sum(axis=(1, 2))
        n_int = mi.sum(axis=(1, 2), dtype=np.int64)
        s_all = np.where(mask, vmap, 0.0).sum(axis=(1, 2))
        n_all = mask.sum(axis=(1, 2), dtype=np.int64)
    return s_int, n_int, s_all, n_all


def _ssim_slice_sums(x, y, mask, *, sigma, data_range, shift, fill_outside, three_d):
    """SSIM map sums per slice of (n, H, W) stacks; 3D filtering when ``three_d`` else per-slice 2D."""
    n, h, w = x.shape
    pad = (ssim_window_size(sigma) - 1) // 2
    sigmas = (sigma if three_d else 0.0, sigma, sigma)
    halo = int(TRUNCATE * sigma + 0.5) if three_d else 0
    out = [np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n, dtype=np.int64)]
    for o0, o1, i0, i1 in _block_ranges(n, h * w, halo):
        xb = _to_hu_range(x[i0:i1], shift)
        yb = _to_hu_range(y[i0:i1], shift)
        mb = None if mask is None else mask[i0:i1]
        if fill_outside and mb is not None:
            fill = 0.0 if shift else HU_MIN
            xb[~mb] = fill
            yb[~mb] = fill
        lum, cs = _ssim_terms(xb, yb, sigmas, data_range)
        smap = (lum * cs)[o0 - i0:o1 - i0]
        sums = _slice_sums(smap, None if mb is None else mb[o0 - i0:o1 - i0], pad)
        for acc, part in zip(out, sums):
            acc[o0:o1] = part
    return out, pad


def _mean_from_sums(s_int, n_int, s_all, n_all) -> float:
    if n_int.sum() > 0:
        return float(s_int.sum() / n_int.sum())
    if n_all.sum() > 0:  # mask only in the border strip: fall back to all mask voxels
        return float(s_all.sum() / n_all.sum())
    return math.nan


def _per_slice_means(s_int, n_int, s_all, n_all) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_int > 0, s_int / np.maximum(n_int, 1),
                        np.where(n_all > 0, s_all / np.maximum(n_all, 1), np.nan))


def _require_window(shape, sigma: float, what: str):
    win = ssim_window_size(sigma)
    if min(shape) < win:
        raise InputError(
            f"{what} of shape {tuple(shape)} is too small for SSIM: every axis needs at least {win} voxels "
            f"(the Gaussian window of sigma {sigma:g} truncated at {TRUNCATE:g} sigma is {win} wide).",
            ("for a volume with few slices use evaluate() (mean of per-slice 2D SSIM) or call ssim() per slice."
             if len(shape) == 3 and min(shape[1:]) >= win else
             "evaluate a larger region, or use a smaller gaussian_sigma."),
        )


def ssim(pred, ref, mask=None, data_range: float = DATA_RANGE, gaussian_sigma: float = 1.5, *,
         shift: bool = True, fill_outside: bool = False) -> float:
    """Mean SSIM of a 2D slice ``(y, x)`` or a 3D volume ``(z, y, x)`` (3D SSIM), averaged inside ``mask``.

    Equals scikit-image's ``structural_similarity(P, R, data_range=data_range, gaussian_weights=True,
    sigma=gaussian_sigma, use_sample_covariance=False)`` for ``mask=None``, where ``P``, ``R`` are the inputs
    clipped to ``[HU_MIN, HU_MAX]`` (and shifted by ``-HU_MIN`` when ``shift``). With a mask the map is
    averaged over mask voxels in the border-cropped interior (see the module notes). Every axis must be at
    least :func:`ssim_window_size` long.
    """
    sigma = _check_sigma(gaussian_sigma)
    data_range = _check_data_range(data_range)
    p, r, m = _prepare(pred, ref, mask, ndims=(2, 3))
    _require_window(p.shape, sigma, "the image")
    three_d = p.ndim == 3
    if not three_d:
        p, r = p[None], r[None]
        m = None if m is None else m[None]
    (s_int, n_int, s_all, n_all), pad = _ssim_slice_sums(
        p, r, m, sigma=sigma, data_range=data_range, shift=shift, fill_outside=fill_outside, three_d=three_d)
    if three_d:  # crop the z border as well: only slices pad .. nz-pad-1 count as interior
        z = slice(pad, p.shape[0] - pad)
        s_int, n_int = s_int[z], n_int[z]
    return _mean_from_sums(s_int, n_int, s_all, n_all)


# ----------------------------------------------------------------------------------------------------------
# MS-SSIM
# ----------------------------------------------------------------------------------------------------------

def ms_ssim_scales(shape2d: Sequence[int], gaussian_sigma: float = 1.5, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Number of MS-SSIM scales (<= ``max_scales``) that fit a ``(H, W)`` slice: each scale's sides >= window."""
    win = ssim_window_size(gaussian_sigma)
    h, w = int(shape2d[-2]), int(shape2d[-1])
    scales = 0
    while scales < max_scales and min(h, w) >= win:
        scales += 1
        h, w = h // 2, w // 2
    return scales


def _pool2(a: np.ndarray) -> np.ndarray:
    """2x2 average pooling of an (n, H, W) stack; an odd last row/column is dropped."""
    n, h, w = a.shape
    a = a[:, : h - h % 2, : w - w % 2]
    return 0.25 * (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2])


def _pool2_any(m: np.ndarray) -> np.ndarray:
    n, h, w = m.shape
    m = m[:, : h - h % 2, : w - w % 2]
    return m[:, 0::2, 0::2] | m[:, 1::2, 0::2] | m[:, 0::2, 1::2] | m[:, 1::2, 1::2]


def _ms_ssim_stack(x, y, mask, *, sigma, data_range, weights, shift):
    """Per-slice MS-SSIM of (n, H, W) stacks; returns (values (n,), scales used, weights used)."""
    n, h, w = x.shape
    scales = ms_ssim_scales((h, w), sigma, len(weights))
    if scales == 0:
        return np.full(n, np.nan), 0, ()
    wts = np.asarray(weights[:scales], dtype=np.float64)
    if scales < len(weights):  # all scales: the weights as given (the standard five sum to 1.0001)
        wts = wts / wts.sum()
    pad = (ssim_window_size(sigma) - 1) // 2
    values = np.empty(n)
    for o0, o1, _, _ in _block_ranges(n, h * w, 0):
        xb = _to_hu_range(x[o0:o1], shift)
        yb = _to_hu_range(y[o0:o1], shift)
        mb = None if mask is None else mask[o0:o1]
        result = np.ones(o1 - o0)
        for j in range(scales):
            lum, cs = _ssim_terms(xb, yb, (0.0, sigma, sigma), data_range)
            vmap = lum * cs if j == scales - 1 else cs
            means = _per_slice_means(*_slice_sums(vmap, mb, pad))
            lost = np.isnan(means)  # mask empty in this slice at this scale (e.g. only in a dropped odd edge)
            if lost.any():  # -> average the whole slice at this scale
                means[lost] = _per_slice_means(*_slice_sums(vmap[lost], None, pad))
            result *= np.maximum(means, 0.0) ** wts[j]
            if j < scales - 1:
                xb, yb = _pool2(xb), _pool2(yb)
                mb = None if mb is None else _pool2_any(mb)
        values[o0:o1] = result
    return values, scales, tuple(float(v) for v in wts)


def ms_ssim(pred, ref, mask=None, data_range: float = DATA_RANGE, gaussian_sigma: float = 1.5,
            weights: Sequence[float] = MS_SSIM_WEIGHTS, *, shift: bool = True) -> float:
    """Multi-scale SSIM of a 2D slice, or the mean over the slices of a 3D volume (slices with mask voxels).

    Uses ``min(len(weights), ms_ssim_scales(...))`` scales with renormalised weights (a
    :class:`MetricWarning` says when fewer than ``len(weights)`` fit); NaN with a warning when none fits.
    Clipping, shift, window and mask handling as for :func:`ssim` (see the module notes).
    """
    sigma = _check_sigma(gaussian_sigma)
    data_range = _check_data_range(data_range)
    weights = tuple(float(v) for v in weights)
    if not weights or any(not (v >= 0 and math.isfinite(v)) for v in weights) or sum(weights) <= 0:
        raise InputError(f"MS-SSIM weights must be non-negative with a positive sum (got {weights}).",
                         f"use the standard weights {MS_SSIM_WEIGHTS}.")
    p, r, m = _prepare(pred, ref, mask, ndims=(2, 3))
    if p.ndim == 2:
        p, r = p[None], r[None]
        m = None if m is None else m[None]
    h, w = p.shape[1:]
    scales = ms_ssim_scales((h, w), sigma, len(weights))
    win = ssim_window_size(sigma)
    if scales == 0:
        warnings.warn(
            f"MS-SSIM is NaN: slices of {h}x{w} are smaller than the {win}x{win} SSIM window, so not even one "
            "scale fits.", MetricWarning, stacklevel=2)
        return math.nan
    if scales < len(weights):
        warnings.warn(
            f"MS-SSIM uses {scales} of {len(weights)} scales: slices of {h}x{w} halve below the {win}x{win} "
            f"window after that (all {len(weights)} scales need sides >= {win * 2 ** (len(weights) - 1)}); "
            "the weights of the scales used are renormalised to sum to 1.", MetricWarning, stacklevel=2)
    keep = np.ones(p.shape[0], dtype=bool) if m is None else m.any(axis=(1, 2))
    values, _, _ = _ms_ssim_stack(p[keep], r[keep], None if m is None else m[keep],
                                  sigma=sigma, data_range=data_range, weights=weights, shift=shift)
    return float(np.mean(values))


# ----------------------------------------------------------------------------------------------------------
# SynthRAD presets (see the module notes)
# ----------------------------------------------------------------------------------------------------------

def _synthrad_prepare(pred, ref, mask, edition: str, fill_outside: bool):
    """float64 (pred, ref, mask) clipped to the edition's range, outside-mask set to its minimum, shifted to >= 0."""
    lo, hi = SYNTHRAD_RANGES[edition]
    p, r, m = _prepare(pred, ref, mask, ndims=(2, 3))
    p = np.clip(p.astype(np.float64), lo, hi)
    r = np.clip(r.astype(np.float64), lo, hi)
    if fill_outside and m is not None:
        p[~m] = lo
        r[~m] = lo
    return p - lo, r - lo, m, hi - lo


def _uniform_moments(x, y, win: int = SYNTHRAD_WIN):
    """Local means, sample variances and covariance over a ``win``^ndim uniform window (reflect borders)."""
    def f(a):
        return ndimage.uniform_filter(a, size=win)

    n = win ** x.ndim
    cov = n / (n - 1.0)
    ux, uy = f(x), f(y)
    vx = cov * (f(x * x) - ux * ux)
    vy = cov * (f(y * y) - uy * uy)
    vxy = cov * (f(x * y) - ux * uy)
    return ux, uy, vx, vy, vxy


def _crop_mean(vmap: np.ndarray, mask: np.ndarray | None, pad: int = SYNTHRAD_PAD) -> float:
    inner = tuple(slice(pad, n - pad) for n in vmap.shape)
    if mask is None:
        return float(vmap[inner].mean(dtype=np.float64))
    sel = mask[inner]
    return float(vmap[inner][sel].mean(dtype=np.float64)) if sel.any() else math.nan


def _require_synthrad_window(shape, what: str = "the image"):
    if min(shape) < SYNTHRAD_WIN:
        raise InputError(f"{what} of shape {tuple(shape)} is too small for the SynthRAD SSIM: every axis needs at "
                         f"least {SYNTHRAD_WIN} voxels (their 7-voxel uniform window).",
                         "evaluate() uses the mean of per-slice 2D values for volumes with fewer than 7 slices.")


def synthrad_ssim(pred, ref, mask=None, edition: str = "synthrad2023") -> float:
    """SSIM as the SynthRAD evaluation code computes it (module notes): 2D slice or 3D volume, every axis >= 7."""
    edition = check_preset(edition)
    p, r, m, rng = _synthrad_prepare(pred, ref, mask, edition, fill_outside=True)
    _require_synthrad_window(p.shape)
    ux, uy, vx, vy, vxy = _uniform_moments(p, r)
    c1, c2 = (K1 * rng) ** 2, (K2 * rng) ** 2
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return _crop_mean(smap, m)


def synthrad_psnr(pred, ref, mask=None, edition: str = "synthrad2023") -> float:
    """PSNR as the SynthRAD code computes it: both clipped to the edition's range, MSE over the mask voxels,
    ``data_range`` = the range's width (4024 for 2023, 4095 for 2025)."""
    edition = check_preset(edition)
    p, r, m, rng = _synthrad_prepare(pred, ref, mask, edition, fill_outside=False)
    d = (p - r) if m is None else (p - r)[m]
    return _psnr_from_mse(float(np.mean(d * d)), rng)


def _synthrad_downsample(a: np.ndarray) -> np.ndarray:
    """Average voxel pairs ``(2k - 1, 2k)`` along every axis, a zero standing before the first voxel (what a
    ``mode="same"`` convolution with a 2-box followed by ``[::2]`` gives)."""
    for axis in range(a.ndim):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (1, 0)
        b = np.pad(a, pad)
        k = (a.shape[axis] + 1) // 2  # ceil(n / 2) outputs, as [::2] keeps
        even = np.take(b, np.arange(0, 2 * k, 2), axis=axis)
        odd = np.take(b, np.arange(1, 2 * k, 2), axis=axis)
        a = 0.5 * (even + odd)
    return a


def synthrad_ms_ssim(pred, ref, mask=None, edition: str = "synthrad2025",
                     weights: Sequence[float] = MS_SSIM_WEIGHTS) -> float:
    """Masked 3D MS-SSIM as the SynthRAD2025 evaluation code computes it (module notes); 2D inputs are
    treated as one-slice volumes (padded to 97 slices like any short axis)."""
    edition = check_preset(edition)
    p, r, m, rng = _synthrad_prepare(pred, ref, mask, edition, fill_outside=True)
    if p.ndim == 2:
        p, r = p[None], r[None]
        m = None if m is None else m[None]
    m = np.ones(p.shape, dtype=bool) if m is None else m
    pads = [(max(0, (SYNTHRAD_MS_SIZE - n) // 2), max(0, SYNTHRAD_MS_SIZE - n - (SYNTHRAD_MS_SIZE - n) // 2))
            for n in p.shape]
    p, r = np.pad(p, pads, mode="edge"), np.pad(r, pads, mode="edge")
    m = np.pad(m, pads, mode="edge")
    c1, c2 = (K1 * rng) ** 2, (K2 * rng) ** 2
    c3 = c2 / 2.0
    total = 1.0
    for j, w in enumerate(weights):
        ux, uy, vx, vy, vxy = _uniform_moments(p, r)
        sx, sy = np.sqrt(np.clip(vx, 0, None)), np.sqrt(np.clip(vy, 0, None))
        lum = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
        con = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
        struct = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
        vmap = lum ** w * con ** w * struct ** w
        total *= float(np.clip(_crop_mean(vmap, m), 0.0, 1.0))
        if j < len(weights) - 1:
            p, r = _synthrad_downsample(p), _synthrad_downsample(r)
            m = m[::2, ::2, ::2]
    return total


def evaluate_synthrad(pred, ref, mask=None, preset: str = "synthrad2023") -> dict:
    """The SynthRAD preset's metrics for a volume ``(z, y, x)`` (module notes): ``mae_hu``, ``me_hu``,
    ``psnr_db``, ``ssim`` (2023) / ``ms_ssim`` (2025; NaN for the other edition's code has none), plus
    ``per_slice`` MAE/ME/PSNR and ``preset``."""
    edition = check_preset(preset)
    p, r, m = _prepare(pred, ref, mask, ndims=(3,))
    if edition == "synthrad2025" and m is not None:  # their code sets the outside to -1024 before every metric
        p = np.where(m, p, -1024.0)
        r = np.where(m, r, -1024.0)
    pf, rf = p.astype(np.float64), r.astype(np.float64)
    d = pf - rf
    mm = np.ones(p.shape, dtype=bool) if m is None else m
    out = {"preset": edition, "hu_range": list(SYNTHRAD_RANGES[edition]),
           "data_range": SYNTHRAD_RANGES[edition][1] - SYNTHRAD_RANGES[edition][0],
           "mae_hu": float(np.abs(d)[mm].mean()), "me_hu": float(d[mm].mean()),
           "psnr_db": synthrad_psnr(p, r, m, edition), "voxels": int(mm.sum())}
    if edition == "synthrad2023":
        if p.shape[0] >= SYNTHRAD_WIN and min(p.shape[1:]) >= SYNTHRAD_WIN:
            out["ssim"], out["ssim_mode"] = synthrad_ssim(p, r, m, edition), "3d"
        elif min(p.shape[1:]) >= SYNTHRAD_WIN:
            vals = [synthrad_ssim(p[z], r[z], None if m is None else m[z], edition)
                    for z in range(p.shape[0]) if mm[z].any()]
            out["ssim"], out["ssim_mode"] = float(np.nanmean(vals)), "2d-slice-mean (fewer than 7 slices)"
        else:
            out["ssim"], out["ssim_mode"] = math.nan, "unavailable: slices smaller than 7 x 7"
        out["ms_ssim"] = math.nan  # the 2023 code has none
    else:
        out["ssim"], out["ssim_mode"] = math.nan, "not part of the SynthRAD2025 image metrics"
        out["ms_ssim"] = synthrad_ms_ssim(p, r, m, edition)
    per_slice = []
    lo, hi = SYNTHRAD_RANGES[edition]
    for z in np.flatnonzero(mm.any(axis=(1, 2))):
        dz = d[z][mm[z]]
        dc = np.clip(pf[z], lo, hi)[mm[z]] - np.clip(rf[z], lo, hi)[mm[z]]
        per_slice.append({"index": int(z), "mae_hu": float(np.abs(dz).mean()), "me_hu": float(dz.mean()),
                          "psnr_db": _psnr_from_mse(float(np.mean(dc * dc)), hi - lo)})
    out["slices"] = len(per_slice)
    out["per_slice"] = per_slice
    return out


# ----------------------------------------------------------------------------------------------------------
# whole-volume evaluation
# ----------------------------------------------------------------------------------------------------------

def evaluate(pred, ref, mask=None, *, data_range: float = DATA_RANGE, gaussian_sigma: float = 1.5,
             shift: bool = True, preset: str = "default") -> dict:
    """All metrics for a 3D volume ``(z, y, x)``, plus per-slice values.

    ``preset``: ``"default"`` (described here) or a SynthRAD preset (:func:`evaluate_synthrad`; the
    other keyword arguments are then ignored). The dict's ``"preset"`` says which one produced the numbers.

    Returns a dict with ``mae_hu``, ``me_hu``, ``psnr_db``, ``ssim``, ``ms_ssim`` for the whole volume
    (inside ``mask``), ``ssim_mode`` (``"3d"`` when every axis, z included, is at least the SSIM window --
    11 voxels for sigma 1.5 --, else ``"2d-slice-mean"``: the mean of the per-slice 2D SSIMs over slices
    with mask voxels; ``"unavailable: ..."`` with NaN when slices are smaller than the window),
    ``ms_ssim_scales`` (number of scales used; 0 means MS-SSIM is NaN), ``ms_ssim_weights``, ``voxels`` (mask
    voxel count), ``slices`` (number of slices with mask voxels) and ``per_slice``: a list of dicts
    ``{index, mae_hu, me_hu, psnr_db, ssim, ms_ssim}`` (2D SSIM/MS-SSIM of that slice) for every slice whose
    mask is non-empty. ``ms_ssim`` of the volume is the mean of the per-slice values.
    """
    preset = check_preset(preset)
    if preset != "default":
        return evaluate_synthrad(pred, ref, mask, preset)
    sigma = _check_sigma(gaussian_sigma)
    data_range = _check_data_range(data_range)
    p, r, m = _prepare(pred, ref, mask, ndims=(3,))
    nz, h, w = p.shape
    win = ssim_window_size(sigma)

    # voxel statistics per slice
    n_sl = np.zeros(nz, dtype=np.int64)
    s_abs, s_err, s_sq = np.zeros(nz), np.zeros(nz), np.zeros(nz)
    for o0, o1, _, _ in _block_ranges(nz, h * w, 0):
        pb = p[o0:o1].astype(np.float64)
        rb = r[o0:o1].astype(np.float64)
        d = pb - rb
        dc = np.clip(pb, HU_MIN, HU_MAX) - np.clip(rb, HU_MIN, HU_MAX)
        mb = np.ones(d.shape, dtype=bool) if m is None else m[o0:o1]
        n_sl[o0:o1] = mb.sum(axis=(1, 2))
        s_abs[o0:o1] = np.where(mb, np.abs(d), 0.0).sum(axis=(1, 2))
        s_err[o0:o1] = np.where(mb, d, 0.0).sum(axis=(1, 2))
        s_sq[o0:o1] = np.where(mb, dc * dc, 0.0).sum(axis=(1, 2))
    idx = np.flatnonzero(n_sl > 0)
    voxels = int(n_sl.sum())

    # SSIM: 2D per slice always (for the per-slice table), 3D for the volume when it fits
    if min(h, w) >= win:
        sums2d, _ = _ssim_slice_sums(p, r, m, sigma=sigma, data_range=data_range, shift=shift,
                                     fill_outside=False, three_d=False)
        ssim2d = _per_slice_means(*sums2d)
        if nz >= win:
            ssim_vol = ssim(p, r, m, data_range, sigma, shift=shift)
            mode = "3d"
        else:
            ssim_vol = float(np.mean(ssim2d[idx]))
            mode = "2d-slice-mean"
    else:
        ssim2d = np.full(nz, np.nan)
        ssim_vol = math.nan
        mode = f"unavailable: slices of {h}x{w} are smaller than the {win}x{win} SSIM window"

    ms_vals = np.full(nz, np.nan)
    ms_vals[idx], scales, wts = _ms_ssim_stack(p[idx], r[idx], None if m is None else m[idx], sigma=sigma,
                                               data_range=data_range, weights=MS_SSIM_WEIGHTS, shift=shift)

    per_slice = []
    for z in idx:
        k = n_sl[z]
        per_slice.append({
            "index": int(z),
            "mae_hu": float(s_abs[z] / k),
            "me_hu": float(s_err[z] / k),
            "psnr_db": _psnr_from_mse(float(s_sq[z] / k), data_range),
            "ssim": float(ssim2d[z]),
            "ms_ssim": float(ms_vals[z]),
        })

    return {
        "preset": "default",
        "mae_hu": float(s_abs.sum() / voxels),
        "me_hu": float(s_err.sum() / voxels),
        "psnr_db": _psnr_from_mse(float(s_sq.sum() / voxels), data_range),
        "ssim": float(ssim_vol),
        "ssim_mode": mode,
        "ms_ssim": float(np.mean(ms_vals[idx])) if scales else math.nan,
        "ms_ssim_scales": int(scales),
        "ms_ssim_weights": wts,
        "voxels": voxels,
        "slices": int(idx.size),
        "per_slice": per_slice,
    }


# ----------------------------------------------------------------------------------------------------------
# reporting helpers
# ----------------------------------------------------------------------------------------------------------

def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) of ``values``, ignoring NaN; ``(nan, nan)`` if none.

    ``inf`` values (e.g. PSNR of identical slices) are kept, so the mean is then ``inf`` and the std NaN.
    """
    a = np.asarray([float(v) for v in values], dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan, math.nan
    if np.isinf(a).any():
        return float(np.mean(a)), math.nan
    return float(np.mean(a)), float(np.std(a))


def _format_value(column: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        name = column.lower()
        if name.endswith("_hu"):
            return f"{v:.1f}"
        if name.endswith("_db"):
            return f"{v:.2f}"
        if "ssim" in name:
            return f"{v:.4f}"
        return f"{v:.4g}"
    if isinstance(value, tuple) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in value):
        if len(value) == 2:  # a (mean, std) pair, as from mean_std()
            return f"{_format_value(column, value[0])} ± {_format_value(column, value[1])}"
        return ", ".join(_format_value(column, v) for v in value)
    return str(value)


def format_table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """Render ``rows`` as a Markdown table that also reads well as plain text.

    ``columns`` defaults to the keys of the rows in first-seen order, leaving out list/dict values (such as
    ``per_slice``). Numbers: HU columns (``*_hu``) 1 decimal, dB columns (``*_db``) 2, SSIM columns 4,
    integers as they are, other floats 4 significant digits; a ``(mean, std)`` tuple prints as
    ``mean ± std``, other tuples of numbers comma-separated. Numeric columns are right-aligned. Missing
    values are blank.
    """
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            for key, val in row.items():
                if key not in columns and not isinstance(val, (list, dict, np.ndarray)):
                    columns.append(key)
    columns = [str(c) for c in columns]
    if not columns:
        return ""
    cells = [[_format_value(c, row.get(c)) for c in columns] for row in rows]
    numeric = []
    for j, c in enumerate(columns):
        vals = [row.get(c) for row in rows if row.get(c) is not None]
        numeric.append(bool(vals) and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            or isinstance(v, tuple) for v in vals))
    widths = [max([len(c)] + [len(r[j]) for r in cells]) for j, c in enumerate(columns)]

    def line(items):
        out = []
        for j, text in enumerate(items):
            out.append(text.rjust(widths[j]) if numeric[j] else text.ljust(widths[j]))
        return "| " + " | ".join(out) + " |"

    header = "| " + " | ".join(c.ljust(widths[j]) if not numeric[j] else c.rjust(widths[j])
                               for j, c in enumerate(columns)) + " |"
    rule = "|" + "|".join(("-" * (widths[j] + 1) + ":") if numeric[j] else ("-" * (widths[j] + 2))
                          for j in range(len(columns))) + "|"
    return "\n".join([header, rule] + [line(r) for r in cells])
